"""Export the encoders of a checkpoint as safetensors + config.json, loadable without Lightning.

    python -m vfm.export outputs/runs/lightning_logs/version_0/checkpoints/last.ckpt exported/
    python -c "import vfm; enc = vfm.load_encoder('exported/')"   # enc.video, enc.text, enc.head

CKPT is a checkpoint of any recipe (its ``video.`` tower, the ``text.`` tower where it has one, the
classification ``head.`` where it has one) or an external weights file (open_clip, ViCLIP, UMT), which makes
this also a converter into vfm's format.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from torch import nn

from vfm.models import VideoViT, load_weights
from vfm.models.convert import ConvertedWeights, strip_prefix
from vfm.models.interchange import (
    build_text_encoder,
    convert_state_dict,
    log_skipped,
    resolve_video_config,
    save_encoder,
    text_config_from_model,
    video_vit_config,
)
from vfm.models.pretrained import unwrap_state_dict
from vfm.recipes.checkpoints import is_lightning_checkpoint, lightning_weights, load_init_weights, read_checkpoint

log = logging.getLogger(__name__)


def _text_config(weights: ConvertedWeights) -> dict[str, Any] | None:
    if "text.positional_embedding" not in weights.state:
        return None
    if weights.model is None:
        log.warning("the checkpoint's text tower has no open_clip architecture recorded: not exported")
        return None
    config = text_config_from_model(weights.model)
    # the stored table decides (a long-video run may have extended the caption length)
    config["text_cfg"]["context_length"] = weights.state["text.positional_embedding"].shape[0]
    return config


def _load_tower(module: nn.Module, weights: ConvertedWeights, prefix: str) -> nn.Module:
    report = load_weights(module, strip_prefix(weights.state, prefix))
    if report.missing:
        log.warning("%s tower: %d tensors not in the checkpoint, exported at init", prefix, len(report.missing))
    return module


def read_weights(path: str | Path) -> tuple[ConvertedWeights, dict[str, Any]]:
    """A checkpoint (or external weights file) as `ConvertedWeights`, with the tokenizer it was trained with."""
    default_tokenizer = {"name": "ViT-B-16", "context_length": 77}
    if Path(path).suffix == ".safetensors":
        return load_init_weights(path), default_tokenizer
    checkpoint = read_checkpoint(path)
    if is_lightning_checkpoint(checkpoint):
        data = checkpoint.get("datamodule_hyper_parameters") or {}
        tokenizer = {"name": data.get("tokenizer", "ViT-B-16"), "context_length": data.get("context_length", 77)}
        return lightning_weights(checkpoint), tokenizer
    weights = convert_state_dict(unwrap_state_dict(checkpoint, str(path)))
    log_skipped(weights, str(path))
    return weights, default_tokenizer


def export(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Writes ``video.safetensors`` (+ ``text`` / ``head``) and ``config.json`` to ``out_dir``."""
    weights, tokenizer = read_weights(checkpoint)
    video_config = resolve_video_config(weights, None, None)
    towers: dict[str, nn.Module] = {"video": _load_tower(VideoViT(**video_config), weights, "video.")}
    config: dict[str, Any] = {"video": video_vit_config(towers["video"]), "source": str(checkpoint)}
    config["source_format"] = weights.format
    text_config = _text_config(weights)
    if text_config is not None:
        towers["text"] = _load_tower(build_text_encoder(text_config), weights, "text.")
        config["text"] = text_config
        tokenizer["context_length"] = text_config["text_cfg"]["context_length"]
    if "head.weight" in weights.state:
        num_classes, in_features = weights.state["head.weight"].shape
        towers["head"] = _load_tower(nn.Linear(in_features, num_classes), weights, "head.")
        features, grid = weights.hparams.get("features", "pre_logits"), weights.hparams.get("grid_size", (4, 2))
        config["head"] = {"in_features": in_features, "num_classes": num_classes, "features": features}
        config["head"]["grid_size"] = list(grid)
        config["classes"] = weights.classes
    config["tokenizer"] = tokenizer
    return save_encoder(out_dir, towers, config)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="a recipe's .ckpt, or an open_clip / ViCLIP / UMT weights file")
    parser.add_argument("out_dir", help="folder to write config.json and <tower>.safetensors to")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = export(args.checkpoint, args.out_dir)
    print(f"exported {args.checkpoint} -> {out} ({', '.join(sorted(p.name for p in out.iterdir()))})")
    return out


if __name__ == "__main__":
    main()
