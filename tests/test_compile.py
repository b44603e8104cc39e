"""``compile: true`` compiles every transformer block and gives the same loss, gradients and FLOPs count."""

from __future__ import annotations

import warnings

import pytest
import torch

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


def step(model: PostPretrain) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    torch.manual_seed(1)  # the same dropped patches and masked words in both runs
    with count_step_flops() as counter:
        loss = model.training_step(batch(), 0)
        counter.start_backward()
        loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads, counter.total


def check_same_step(backend: str) -> None:
    eager, compiled = recipe(False, backend), recipe(True, backend)
    blocks = [m for m in compiled.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert len(blocks) == len(compiled.video.blocks) + len(compiled.text.transformer.resblocks) + len(
        compiled.fusion.layers
    )
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # checkpoints are interchangeable
    loss, grads, flops = step(eager)
    compiled_loss, compiled_grads, compiled_flops = step(compiled)
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
