"""Every shipped config parses through the CLI (nothing runs), and a tiny fit/test round trip works."""

from pathlib import Path

import pytest
import yaml

from vfm.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
RECIPES = sorted(p for p in CONFIGS.glob("*.yaml"))
OVERLAYS = sorted(CONFIGS.glob("demo/*.yaml"))


def architecture_args(*configs: Path) -> list[str]:
    """Configs that take their architecture from ``init_from`` (fine-tuning) get one named here instead."""
    init_args = {}
    for config in configs:
        init_args.update(yaml.safe_load(config.read_text()).get("model", {}).get("init_args", {}))
    describes = "model" in init_args or "student" in init_args  # UMT names its architecture `student`
    if "init_from" in init_args and init_args["init_from"] is None and not describes:
        return ["--model.model", "vit-tiny-test"]
    return []


def test_configs_exist():
    assert RECIPES and OVERLAYS


@pytest.mark.parametrize("config", RECIPES, ids=lambda p: p.name)
def test_recipe_config_parses(config):
    cli = main(["--config", str(config), *architecture_args(config)], run=False)
    assert cli.model.__class__.__name__ == yaml.safe_load(config.read_text())["model"]["class_path"].split(".")[-1]


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_demo_overlay_parses_on_its_recipe(overlay):
    base = CONFIGS / overlay.name
    cli = main(["--config", str(base), "--config", str(overlay), *architecture_args(base, overlay)], run=False)
    assert cli.datamodule.hparams.num_frames == yaml.safe_load(overlay.read_text())["data"]["num_frames"]


def test_unknown_key_is_a_clear_error(capsys):
    with pytest.raises(SystemExit):
        main(["--config", str(RECIPES[0]), "--data.batch_sise", "4"], run=False)
    assert "batch_sise" in capsys.readouterr().err


def test_explicit_model_arguments_are_read_from_the_command_line():
    from vfm.cli import explicit_model_arguments

    args = [
        "test",
        "--config",
        "c.yaml",
        "--model.lr",
        "1e-3",
        "--model.init_args.rerank_k=4",
        "--data.batch_size",
        "2",
        "--model.student",
        "{}",
        "--model.class_path",
        "x",
        "--model.lr=2e-3",
    ]
    assert explicit_model_arguments(args) == ["lr", "rerank_k", "student"]


def test_recipe_configs_leave_the_precision_to_the_device():
    # null: bf16-mixed on a GPU with bf16, 32-true on the CPU (vfm.runs.resolve_precision); the demos pin 32-true
    fixed = {c.name: p for c in RECIPES if (p := yaml.safe_load(c.read_text())["trainer"].get("precision")) is not None}
    assert not fixed
