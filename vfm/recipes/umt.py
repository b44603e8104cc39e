"""Recipe 2, stage 1: Unmasked Teacher video distillation (arXiv 2303.16058).

A video ViT student trained from scratch sees only the patches a frozen CLIP teacher attends to (20% per
frame) and aligns its last K layers to the teacher's last K through Linear + LayerNorm heads (2 - 2 cos on
the visible tokens). Video only: the captions of the shards are not used.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from vfm.models import VideoViT
from vfm.models.unmasked_teacher import MaskMode, TeacherAlignment
from vfm.recipes.umt_student import compile_umt, configure_adamw_cosine, load_umt_init, student_config
from vfm.recipes.umt_teacher import build_teacher, check_teacher, record_teacher


class UnmaskedTeacher(L.LightningModule):
    """UMT stage 1: student (``video``) + frozen teacher and alignment heads (``align``).

    Args:
        student: `VideoViT` sizes over ViT-B/16 (e.g. ``{width: 128, layers: 4, heads: 4, image_size: 64}``);
            tubelet 1, sin-cos positions, no CLS token and mean pooling are fixed.
        init_from: a vfm checkpoint of either UMT stage or a released UMT stage-1 / stage-2 file: the student
            and alignment-head tensors whose names match are loaded, the rest is reported. Read in
            ``setup('fit')``, before Lightning restores ``--ckpt_path``: a resumed run keeps its checkpoint's
            weights (the file must still be readable; ``--model.init_from null`` resumes without it).
        teacher: local weights of the teacher: an open_clip / OpenAI CLIP file or a vfm checkpoint.
        teacher_model: the teacher's open_clip architecture where the file does not tell it.
        teacher_attention: ``frame`` runs the teacher frame by frame (an image CLIP); ``joint`` over the clip.
        teacher_autocast: run the teacher under bf16 autocast.
        align_layers: K, the last K student layers aligned to the teacher's last K.
        mask_ratio, mask_mode: fraction of patches hidden per frame; ``attention`` (semantic masking),
            ``random``, ``tube`` or ``per_frame``.
        drop_path_rate, grad_checkpointing: the student's stochastic depth and activation recomputation.
        compile: ``torch.compile`` each transformer block (student and teacher) when the model is set up (same
            results, faster steps once compiled).
        lr, lr_reference_batch: base lr, scaled by global batch / lr_reference_batch (None: no scaling).
        weight_decay, betas, warmup, min_lr_ratio: AdamW and the warmup (fraction or steps) + cosine schedule.
    """

    def __init__(
        self,
        student: dict[str, Any] | None = None,
        init_from: str | None = None,
        teacher: str | None = None,
        teacher_model: str | dict | None = None,
        teacher_attention: Literal["frame", "joint"] = "frame",
        teacher_autocast: bool = True,
        align_layers: int = 6,
        mask_ratio: float = 0.8,
        mask_mode: MaskMode = "attention",
        drop_path_rate: float = 0.1,
        grad_checkpointing: bool = False,
        lr: float = 1.5e-4,
        lr_reference_batch: int | None = 256,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup: float = 0.2,
        min_lr_ratio: float = 0.0,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.compile_enabled = compile
        self.compile_options: dict = {}  # torch.compile arguments, e.g. {"backend": "aot_eager"}
        self._compiled = False
        # not a hyper-parameter (the CLI would pass it back to __init__); saved in checkpoints for init_from
        self.video_config = student_config(student)
        config = self.video_config
        self.video = VideoViT(**config, drop_path_rate=drop_path_rate)
        self.video.set_grad_checkpointing(grad_checkpointing)
        self.align: TeacherAlignment | None = None
        if teacher is not None:  # without one the config still parses; `setup` then stops the run
            frozen = build_teacher(
                teacher, teacher_model, teacher_attention, align_layers, teacher_autocast, config["num_frames"]
            )
            self.align = TeacherAlignment(frozen, self.video.width, self.video.ln_post.eps)
            self.align.check_student(self.video, config["image_size"])

    def setup(self, stage: str) -> None:
        if self.align is None:
            raise ValueError("UMT stage 1 learns from its teacher only: set model.teacher to a local weights file")
        if stage == "fit" and self.hparams.init_from:
            self.load_init(self.hparams.init_from)

    def load_init(self, path: str) -> None:
        load_umt_init(self, path)

    def configure_model(self) -> None:
        compile_umt(self)

    def alignment_step(self, video: torch.Tensor) -> torch.Tensor:
        h = self.hparams
        distill = self.align.distill_targets(video, h.mask_ratio, h.mask_mode)
        layers = self.video.forward_intermediates(
            video, indices=h.align_layers, keep=distill.keep, intermediates_only=True
        )
        return self.align.loss(self.video, layers, video, distill)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.alignment_step(batch["video"])
        self.log("train/alignment", loss, prog_bar=True, batch_size=batch["video"].shape[0])
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.alignment_step(batch["video"])
        self.log("val/alignment", loss, batch_size=batch["video"].shape[0], sync_dist=True)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        loss = self.alignment_step(batch["video"])
        self.log("test/alignment", loss, batch_size=batch["video"].shape[0], sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw_cosine(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["video_config"] = dict(self.video_config)  # init_from rebuilds the student from it
        record_teacher(checkpoint, self.align.teacher if self.align is not None else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_teacher(checkpoint, self.align.teacher if self.align is not None else None)
