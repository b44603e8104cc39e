"""``compile: true`` compiles every transformer block and gives the same loss, gradients and FLOPs count
(post-pretraining, and both UMT stages with their frozen teacher)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from conftest import random_clip_file

from vfm.flops import count_step_flops
from vfm.recipes.post_pretrain import PostPretrain


def recipe(compile: bool, backend: str) -> PostPretrain:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PostPretrain(
            model="vit-tiny-test", num_frames=4, drop_ratio=0.5, fusion_heads=4, temperature_init=0.07, compile=compile
        )
    model.log_dict = lambda *args, **kwargs: None
    model.compile_options = {"backend": backend}
    model.configure_model()  # what the Trainer calls before the strategy wraps the model
    return model


def batch() -> dict:
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(1, 400, (4, 12), generator=generator)
    text[:, 0], text[:, 8], text[:, 9:] = 49406, 49407, 0
    video = torch.randn(4, 4, 3, 32, 32, generator=generator)
    return {"video": video, "text": text, "text_mask": text != 0, "caption": [f"c{i}" for i in range(4)]}


def step(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(1)  # the same dropped patches and masked words in both runs
    with count_step_flops() as counter:
        loss = model.training_step(batch, 0)
        counter.start_backward()
        loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, counter.total


def compiled_blocks(*modules: torch.nn.Module) -> int:
    return sum(getattr(m, "_compiled_call_impl", None) is not None for module in modules for m in module.modules())


def check_same_step(backend: str) -> None:
    eager, compiled = recipe(False, backend), recipe(True, backend)
    assert compiled_blocks(compiled) == len(compiled.video.blocks) + len(compiled.text.transformer.resblocks) + len(
        compiled.fusion.layers
    )
    assert_same_step(eager, compiled, batch())


def assert_same_step(eager: torch.nn.Module, compiled: torch.nn.Module, batch: dict) -> None:
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints are interchangeable
    loss, grads, flops = step(eager, batch)
    compiled_loss, compiled_grads, compiled_flops = step(compiled, batch)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-6)
    assert compiled_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
    assert compiled_flops == flops  # MFU counts the same model FLOPs when compiled


def test_compiled_blocks_give_the_same_step():
    check_same_step("aot_eager")  # the whole compile path but the code generator: fast on any CPU


@pytest.mark.slow
def test_inductor_compiled_blocks_give_the_same_step():
    check_same_step("inductor")  # generates and builds C++ kernels: about a minute on a small CPU


@pytest.fixture(scope="module")
def teacher_file(tmp_path_factory) -> Path:
    return random_clip_file(tmp_path_factory.mktemp("teacher"), seed=0)


def umt_recipe(stage: int, compile: bool, teacher: Path) -> torch.nn.Module:
    from vfm.recipes.umt import UnmaskedTeacher
    from vfm.recipes.umt_multimodal import UnmaskedTeacherMultimodal

    torch.manual_seed(0)
    student = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "num_frames": 4}
    common = dict(
        student=student,
        teacher=str(teacher),
        teacher_model="vit-tiny-test",
        align_layers=2,
        teacher_autocast=False,
        drop_path_rate=0.0,
        compile=compile,
    )
    if stage == 1:
        model = UnmaskedTeacher(**common, lr_reference_batch=None)
    else:
        bert = {
            "vocab_size": 128,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_position_embeddings": 16,
        }
        model = UnmaskedTeacherMultimodal(**common, text_model=bert, fusion_layer=1, embed_dim=16)
        model.special_ids = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
    model.log = model.log_dict = lambda *args, **kwargs: None
    model.compile_options = {"backend": "aot_eager"}
    model.configure_model()
    return model


@pytest.mark.parametrize("stage", [1, 2])
def test_compiled_umt_blocks_give_the_same_step(stage, teacher_file):
    eager, compiled = umt_recipe(stage, False, teacher_file), umt_recipe(stage, True, teacher_file)
    teacher = compiled.align.teacher.model
    text_layers = len(compiled.text.bert.encoder.layer) if stage == 2 else 0
    assert compiled_blocks(compiled) == len(compiled.video.blocks) + text_layers
    assert compiled_blocks(teacher) == len(teacher.blocks)  # outside the module tree, compiled as well
    text = torch.randint(5, 128, (4, 10), generator=torch.Generator().manual_seed(0))
    batch = {
        "video": torch.randn(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(0)),
        "text": text,
        "text_mask": torch.ones(4, 10, dtype=torch.bool),
        "caption": [f"c{i}" for i in range(4)],
    }
    assert_same_step(eager, compiled, batch)
