"""Building Unmasked Teacher's frozen teacher from a file, and recording it in the student's checkpoints.

The teacher is any local weights file `load_init_weights` reads: an open_clip / OpenAI CLIP checkpoint (its
image tower, run frame by frame) or a Lightning checkpoint of any vfm recipe (its ``video.`` tower, so the
post-pretrained model can teach). Its weights are never saved with the student; its path and sha256 are,
and a resumed run checks that the teacher it is given is the same file.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from vfm.models import VideoViT, load_weights
from vfm.models.convert import strip_prefix
from vfm.models.interchange import resolve_video_config
from vfm.models.teacher import FrozenTeacher, file_sha256
from vfm.recipes.checkpoints import load_init_weights

log = logging.getLogger(__name__)
CHECKPOINT_KEY = "umt_teacher"


def build_teacher(
    source: str,
    model: str | dict | None = None,
    attention: Literal["frame", "joint"] = "frame",
    num_layers: int = 6,
    autocast: bool = True,
    num_frames: int = 8,
) -> FrozenTeacher:
    """The frozen teacher from a local file; `model` names its architecture where the file cannot."""
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"teacher weights {str(path)!r} not found: give a local open_clip checkpoint or a vfm Lightning "
            "checkpoint (nothing is downloaded)"
        )
    weights = load_init_weights(path)
    overrides = {"attention": attention, "drop_ratio": 0.0, "drop_path_rate": 0.0}
    if weights.format != "lightning":  # an image CLIP: its frames are independent, any clip length works
        overrides["num_frames"] = num_frames
    config = resolve_video_config(weights, model, overrides)
    tower = VideoViT(**config)
    report = load_weights(tower, strip_prefix(weights.state, "video."))
    if report.missing:
        missing = [key for key in report.missing if "temporal" not in key]
        if missing:
            raise RuntimeError(f"teacher file {path} lacks weights for {missing}")
    log.info("UMT teacher: %s (%s, %d blocks, %s attention)", path, weights.format, len(tower.blocks), attention)
    return FrozenTeacher(tower, num_layers, autocast, source=str(path), sha256=file_sha256(path))


def record_teacher(checkpoint: dict, teacher: FrozenTeacher | None) -> None:
    if teacher is not None:
        checkpoint[CHECKPOINT_KEY] = teacher.describe()


def check_teacher(checkpoint: dict, teacher: FrozenTeacher | None) -> None:
    """Raise when a checkpoint was trained with another teacher file than the one configured now."""
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None or teacher is None:
        if saved is not None or teacher is not None:
            log.warning("checkpoint teacher %s, configured teacher %s", saved, teacher and teacher.describe())
        return
    if saved.get("sha256") != teacher.sha256:
        raise ValueError(
            f"the checkpoint was trained with teacher {saved.get('source')} (sha256 {saved.get('sha256')}); "
            f"the configured teacher {teacher.source} has sha256 {teacher.sha256}: resume with the same file"
        )
