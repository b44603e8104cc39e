"""FSDP: wrapping per transformer block with frozen parts ignored, checked on the CPU with torch's FSDP (one
gloo process); the Lightning strategy end to end on a GPU (marked ``gpu``). Every trainer overlay parses."""

from __future__ import annotations

import os
import socket
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import yaml
from conftest import TrainingStep, clip_sample, write_shards

from vfm.cli import main
from vfm.fsdp import BlockFSDPStrategy, fsdp_settings
from vfm.models.layers import Block
from vfm.recipes.long_video import LongVideoContrastive
from vfm.recipes.optim import build_adamw

ROOT = Path(__file__).resolve().parents[1]
TRAINER_CONFIGS = sorted((ROOT / "configs/trainer").glob("*.yaml"))


def partly_frozen_recipe() -> LongVideoContrastive:
    """Video blocks 0 frozen and 1 trained, text tower frozen: the shape of every frozen-teacher case."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        recipe = LongVideoContrastive(model="vit-tiny-test", num_frames=4, trainable_layers=1, freeze_text=True)
    recipe.log_dict = lambda *args, **kwargs: None
    return recipe


def test_settings_wrap_trainable_blocks_and_ignore_frozen_modules():
    recipe = partly_frozen_recipe()
    wrap, checkpointing = fsdp_settings(recipe)
    ignored = wrap["ignored_modules"]
    assert recipe.text in ignored and recipe.video.blocks[0] in ignored and recipe.video.conv1 in ignored
    assert recipe.video.blocks[1] not in ignored and recipe.vtc not in ignored
    assert wrap["auto_wrap_policy"]._module_classes == {Block}  # the frozen text tower's blocks are not units
    check = checkpointing["check_fn"]
    assert check(recipe.video.blocks[1]) and not check(recipe.video.blocks[0]) and not check(recipe.video)
    assert fsdp_settings(recipe, activation_checkpointing=False)[1] == {}


@pytest.fixture
def gloo_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def batch(size: int = 2) -> dict:
    text = torch.randint(1, 400, (size, 12))
    text[:, 0], text[:, 8], text[:, 9:] = 49406, 49407, 0
    return {"video": torch.randn(size, 4, 3, 32, 32), "text": text, "text_mask": text != 0, "caption": ["a", "b"]}


def test_fsdp_shards_blocks_keeps_frozen_parts_out_and_trains(gloo_group):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    recipe = partly_frozen_recipe()
    trainable = {name for name, p in recipe.named_parameters() if p.requires_grad}
    wrap, _ = fsdp_settings(recipe)
    model = FSDP(TrainingStep(recipe), device_id=torch.device("cpu"), use_orig_params=True, **wrap)
    units = [name for name, module in model.named_modules() if isinstance(module, FSDP)]
    assert units == ["", "_fsdp_wrapped_module.recipe.video.transformer.resblocks.1"]
    flat = {id(p) for unit in model.modules() if isinstance(unit, FSDP) for p in unit.params}
    frozen_ids = {id(p) for module in wrap["ignored_modules"] for p in module.parameters()}
    assert frozen_ids and not frozen_ids & flat  # the frozen parts hold no sharded (flat) parameter
    optimizer = build_adamw(model, 1e-3, 0.1, (0.9, 0.98))
    in_optimizer = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    assert in_optimizer == sum(p.numel() for p in recipe.parameters() if p.requires_grad)
    before = recipe.video.blocks[1].mlp.c_fc.weight.detach().clone()
    loss = model(batch())
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    with_grad = {
        name.replace("_fsdp_wrapped_module.", "").removeprefix("recipe.")
        for name, p in model.named_parameters()
        if p.grad is not None
    }
    assert with_grad and with_grad <= trainable
    with FSDP.summon_full_params(model):
        assert not torch.equal(before, recipe.video.blocks[1].mlp.c_fc.weight)


@pytest.mark.parametrize("config", TRAINER_CONFIGS, ids=lambda p: p.name)
def test_trainer_overlay_parses_on_a_recipe(config):
    args = ["--config", str(ROOT / "configs/post_pretrain.yaml"), "--config", str(config)]
    cli = main(
        [*args, "--model.model", "vit-tiny-test", "--trainer.accelerator", "cpu", "--trainer.devices", "2"], run=False
    )
    expected = yaml.safe_load(config.read_text())["trainer"]["strategy"]["class_path"].rsplit(".", 1)[-1]
    assert type(cli.trainer.strategy).__name__ == expected


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP through Lightning needs a GPU")
def test_fsdp_strategy_fits_a_partly_frozen_recipe_on_gpu(tmp_path):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    write_shards(tmp_path / "shards", [clip_sample(i) for i in range(8)], 8, "train")
    cli = main([
        "fit", "--config", str(ROOT / "configs/long_video.yaml"), "--config", str(ROOT / "configs/trainer/fsdp.yaml"),
        "--trainer.devices", "1", "--trainer.max_steps", "3", "--trainer.enable_progress_bar", "false",
        "--model.model", "vit-tiny-test", "--model.num_frames", "4", "--model.trainable_layers", "1",
        "--model.freeze_text", "true", "--data.train_shards", str(tmp_path / "shards/train-*.tar"),
        "--data.val_shards", "null", "--data.num_frames", "4", "--data.image_size", "32", "--data.batch_size", "2",
        "--data.num_workers", "0", "--data.samples_per_epoch", "8", "--data.context_length", "32",
        f"--trainer.default_root_dir={tmp_path}",
    ])  # fmt: skip
    trainer = cli.trainer
    assert isinstance(trainer.strategy, BlockFSDPStrategy) and trainer.global_step == 3
    assert str(trainer.precision) == "bf16-mixed" or not torch.cuda.is_bf16_supported()
    units = [name for name, module in trainer.strategy.model.named_modules() if isinstance(module, FSDP)]
    assert units == ["", "_fsdp_wrapped_module.video.transformer.resblocks.1"]
    recipe = trainer.lightning_module
    assert recipe.text.token_embedding.weight.device.type == "cuda"  # ignored modules moved to the device
    assert all(p.grad is None for p in recipe.text.parameters())
    checkpoint = torch.load(trainer.checkpoint_callback.last_model_path, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 3 and "text.token_embedding.weight" in checkpoint["state_dict"]
