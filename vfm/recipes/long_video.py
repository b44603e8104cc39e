"""Recipe 3: long-video masked contrastive pretraining (arXiv 2312.07395, "A Simple Recipe for Contrastively
Pre-training Video-First Encoders Beyond 16 Frames"; no official code).

A video-first encoder (the shared ViT with joint space-time attention, initialised from an image-text
model) is trained with InfoNCE against the text tower while most of its input tokens are masked (dropped
before the encoder, 75% by default). Two stages share this class:

- short (``configs/long_video.yaml``): 16 frames, from an image-text model (``pretrained``) or any vfm
  checkpoint (``init_from``);
- long (``configs/long_video_long.yaml``): from the short checkpoint, 128 frames at a fixed rate, only
  the last ``trainable_layers`` blocks trained (the rest frozen, outside the optimizer, and holding no
  activations for backward), gradient checkpointing on.

The encoder variants the paper compares are the ``attention`` switch: ``joint``, ``factorized``, ``frame``.
"""

from __future__ import annotations

import logging
from typing import Literal

import torch

from vfm.losses import VideoTextContrastiveLoss
from vfm.models import LoadReport, VideoViT, create_towers, load_weights, sample_keep_indices
from vfm.models.text import extend_positions
from vfm.models.video_vit import resample_temporal_embedding
from vfm.recipes.base import VideoTextRecipe, caption_ids
from vfm.recipes.checkpoints import load_init_weights, tower_state_dict
from vfm.recipes.time_order import append_reversed_clips, hard_negative_text, paired_keep_indices, time_order_loss

log = logging.getLogger(__name__)


class LongVideoContrastive(VideoTextRecipe):
    """Masked video-text contrastive training of a video-first encoder, at 16 frames and beyond.

    Args:
        model: open_clip architecture name (``ViT-B-16``; ``vit-tiny-test`` for tests) or config dict.
        pretrained: local open_clip checkpoint file (the image-text model the paper starts from).
        init_from: a vfm Lightning checkpoint whose ``video.`` / ``text.`` (and ``vtc.``) weights initialise
            the towers, e.g. the short stage for the long one. Read when fitting starts (and for evaluation
            without ``--ckpt_path``); a temporal embedding stored for another frame count is interpolated,
            a shorter text context extended.
        num_frames: frames the temporal embedding is stored for (clips of any length are interpolated).
        attention: ``joint`` space-time, ``factorized`` or ``frame``-level (the paper's comparison).
        pool: ``mean`` of the output tokens over space and time, or the ``cls`` token; frame-level attention
            averages each frame's CLS over time.
        drop_ratio, drop_mode: input masking in training (tokens dropped before the encoder): ``random``,
            ``tube`` (same positions in every frame) or ``per_frame`` (same count per frame; frame-level and
            factorised attention need ``tube`` or ``per_frame``).
        eval_drop_ratio: masking at evaluation (the paper: 0.3 costs nothing and saves memory); the kept
            tokens are drawn from a fixed seed, so evaluations repeat exactly.
        trainable_layers: train only the last N blocks of the video encoder (plus its final norm and
            projection); None trains everything.
        freeze_text: keep the text tower fixed (out of the optimizer).
        freeze_text_embedding: keep only the word embedding table fixed: most of a small text tower's
            parameters, and most rows are words a caption corpus never uses.
        context_length: text tokens the text tower accepts; a larger value than the model's extends its
            position table (long-video captions outgrow 77 tokens).
        compile: ``torch.compile`` each transformer block when the model is set up (same results, faster steps
            after the first ones compile).
        grad_checkpointing: recompute each block's activations in backward (memory for compute).
        hard_negative_weight: weight of extra InfoNCE terms for the order of events: each clip over its
            caption and its hard negative caption (``swapped_text``: two events swapped; else
            ``reverse_text``), and, with ``reverse_negatives``, each caption over its clip and the clip
            played backwards. Not in the paper (0 there): in-batch negatives seldom differ only in order.
        reverse_negatives: fraction of each batch appended played backwards with the time-reversed caption.
        temperature_init: initial contrastive temperature (1/100 from a trained CLIP; ``init_from`` loads the
            checkpoint's learned one).
    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = None,
        init_from: str | None = None,
        num_frames: int = 16,
        attention: Literal["joint", "factorized", "frame"] = "joint",
        pool: Literal["cls", "mean"] = "mean",
        drop_ratio: float = 0.75,
        drop_mode: Literal["random", "tube", "per_frame"] = "random",
        eval_drop_ratio: float = 0.0,
        trainable_layers: int | None = None,
        freeze_text: bool = False,
        freeze_text_embedding: bool = False,
        context_length: int | None = None,
        grad_checkpointing: bool = False,
        hard_negative_weight: float = 0.0,
        reverse_negatives: float = 0.0,
        temperature_init: float = 0.01,
        lr: float = 1e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        temporal_eval: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup, min_lr_ratio, temporal_eval, compile)
        self.save_hyperparameters()
        self.video, self.text = create_towers(
            model, pretrained, num_frames=num_frames, attention=attention, pool=pool,
            drop_ratio=drop_ratio, drop_mode=drop_mode,
        )  # fmt: skip
        if context_length is not None:
            self.text.extend_context(context_length)
        self.vtc = VideoTextContrastiveLoss(init_scale=1 / temperature_init)
        freeze_video_layers(self.video, trainable_layers)
        if freeze_text:
            self.text.requires_grad_(False)
        if freeze_text_embedding:
            self.text.token_embedding.requires_grad_(False)
        if grad_checkpointing:
            self.video.set_grad_checkpointing(True)
            self.text.set_grad_checkpointing(True)
        self._initialised = init_from is None

    # ---- initialisation --------------------------------------------------------------------------
    def init_towers(self, path: str) -> dict[str, LoadReport]:
        """Loads the towers (and the learned temperature, when present) from a vfm checkpoint of any recipe
        or an external file that ``load_init_weights`` converts (open_clip, ViCLIP, UMT: video tower only)."""
        state = load_init_weights(path).state
        video = tower_state_dict(state, "video.")
        if "temporal_embedding" in video:
            video["temporal_embedding"] = resample_temporal_embedding(
                video["temporal_embedding"], self.video.num_frames
            )
        reports = {"video.": load_weights(self.video, video)}
        if any("temporal_attn" in key for key in reports["video."].missing):
            self.video.init_temporal_from_spatial()  # a joint / frame checkpoint into a factorised encoder
        if any(key.startswith("text.") for key in state):
            text = tower_state_dict(state, "text.")
            if "positional_embedding" in text:
                positions = text["positional_embedding"]
                text["positional_embedding"] = extend_positions(positions, self.text.context_length)
            reports["text."] = load_weights(self.text, text)
        if "vtc.logit_scale.log_scale" in state:
            reports["vtc."] = load_weights(self.vtc, tower_state_dict(state, "vtc."))
        log.info("init_from %s: %s", path, {prefix: len(r.loaded) for prefix, r in reports.items()})
        self._initialised = True
        return reports

    def _init_once(self) -> None:
        if not self._initialised:
            self.init_towers(self.hparams.init_from)

    def setup(self, stage: str) -> None:
        # Before the optimizer is built; a resumed run's --ckpt_path then overwrites these weights.
        if stage == "fit":
            self._init_once()

    def _init_for_evaluation(self) -> None:
        # validate/test/predict of the init_from weights themselves (zero-shot), unless a checkpoint was given
        if self.trainer.ckpt_path is None:
            self._init_once()

    on_validation_start = on_test_start = on_predict_start = _init_for_evaluation

    # ---- encoders --------------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video(video, self._eval_keep(video))

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor | None) -> torch.Tensor:
        # long captions vary in length (4-12 events): the causal tower skips the padding after the longest one
        return self.text(self.text.trim_padding(text, text_mask)[0]).embedding

    def _eval_keep(self, video: torch.Tensor) -> torch.Tensor | None:
        """Kept tokens at evaluation: all, or a fixed-seed draw at ``eval_drop_ratio``."""
        ratio = self.hparams.eval_drop_ratio
        if self.training or ratio <= 0:
            return None
        patches = (video.shape[-2] // self.video.patch_size) * (video.shape[-1] // self.video.patch_size)
        generator = torch.Generator().manual_seed(0)
        return sample_keep_indices(
            self.video.drop_mode, video.shape[0], video.shape[1], patches, ratio, generator, video.device
        )

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        both = append_reversed_clips(batch, h.reverse_negatives)
        video_embedding = self.video(both.video, paired_keep_indices(self.video, both.video, both.size))
        text_embedding = self.encode_text(both.text, both.text_mask)
        vtc = self.vtc(video_embedding, text_embedding, caption_ids(both.captions, both.text.device))
        loss = vtc
        logs = {"train/vtc": vtc, "train/temperature": 1 / self.vtc.logit_scale().detach()}
        if h.hard_negative_weight > 0:
            negative_text = hard_negative_text(batch)
            negatives = self.encode_text(*negative_text) if negative_text is not None else None
            scale = self.vtc.logit_scale()
            hard = time_order_loss(both.size, video_embedding, text_embedding, scale, negatives)
            if hard is not None:
                loss = loss + h.hard_negative_weight * hard
                logs["train/hard_negative"] = hard
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=both.video.shape[0])
        return loss

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        # The time-order test of long videos uses the event-swapped caption as the hard negative. The base
        # class prefers `reverse_text`, which the long shards carry too, so the swapped one is put first.
        if "swapped_text" in batch:
            batch = {k: v for k, v in batch.items() if not k.startswith("reverse_text")}
        super()._eval_step(batch)


def freeze_video_layers(video: VideoViT, trainable_layers: int | None) -> None:
    """Train only the last ``trainable_layers`` blocks and the head (``ln_post``, ``proj``); freeze the rest.

    With the embeddings and early blocks frozen nothing before the first trainable block needs a gradient,
    so autograd records nothing there: those layers cost no activation memory in training.
    """
    if trainable_layers is None:
        return
    if not 0 <= trainable_layers <= len(video.blocks):
        raise ValueError(f"trainable_layers={trainable_layers} but the encoder has {len(video.blocks)} blocks")
    video.requires_grad_(False)
    for block in video.blocks[len(video.blocks) - trainable_layers :]:
        block.requires_grad_(True)
    video.ln_post.requires_grad_(True)
    if video.proj is not None:
        video.proj.requires_grad_(True)
