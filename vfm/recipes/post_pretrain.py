"""Recipe 1: post-pretraining an image CLIP into a video model with random patch dropping and text
masking (arXiv 2310.19554; ViCLIP fixes the parts the paper leaves open).

Losses: video-text contrastive (all-gathered) + masked language modelling through a light cross-modal
fusion module in which masked text tokens attend to the video tokens.
"""

from __future__ import annotations

from typing import Literal

import torch

from vfm.losses import VideoTextContrastiveLoss, masked_lm_loss
from vfm.models import CrossModalFusion, create_towers, mask_text_tokens
from vfm.recipes.base import VideoTextRecipe, caption_ids
from vfm.recipes.time_order import append_reversed_clips, paired_keep_indices, time_order_loss


class PostPretrain(VideoTextRecipe):
    """CLIP -> video CLIP with patch dropping (``drop_ratio``) and text masking (``text_mask_prob``).

    Args:
        model: open_clip architecture name (``ViT-B-16``; ``vit-tiny-test`` for tests) or config dict.
        pretrained: local open_clip checkpoint file; None trains from random towers (with a warning).
        num_frames: frames the temporal embedding is stored for (others are interpolated).
        drop_ratio, drop_mode: fraction of patch tokens dropped in training; ``random`` or ``tube``.
        pool: video pooling, ``cls`` (CLIP) or ``mean``.
        text_mask_prob: BERT-style masking probability of the caption for the MLM loss.
        vtc_weight, mlm_weight: loss weights (mlm_weight 0 skips the fusion module's work).
        fusion_layers, fusion_heads: size of the cross-modal fusion module.
        unmasked_fraction: the last fraction of steps trains with no patch dropping (the paper's short
            unmasked tune that closes the train/test gap).
        reverse_negatives: fraction of each batch appended again played backwards with its time-reversed
            caption (needs ``reverse_caption`` in the shards): hard negatives for the order of events. A
            reversed copy keeps its original's tokens when patches are dropped.
        hard_negative_weight: weight of an extra InfoNCE term of each reversed clip's caption over the clip and
            its reversed copy only (with ``reverse_negatives``): the direction of time, undiluted by the
            in-batch negatives, which differ in far more than the order. Not in the paper (0 there).
        time_order_warmup: the first fraction of steps trains the time-order term alone (no VTC, no MLM, no
            patch dropping). Not in the paper (0 there). At demo scale (a 4-layer ViT from random weights) the
            direction of time is learned within ~100 steps this way, but not in 500 steps with VTC or dropping
            on from the start: both pull the young encoder to colour and shape first (see docs/BENCHMARKS.md).
        time_order_ramp: after the warmup, the VTC and MLM weights rise linearly from 0 to their values over
            this fraction of steps. Switching them on at once makes a big, badly aligned VTC loss that the towers
            escape by collapsing (every similarity equal, the time-order term back at log 2), a plateau that
            lasted 60 steps or more at demo scale.
        temperature_init: initial contrastive temperature (CLIP's 1/100 when starting from a trained CLIP;
            from random towers CLIP's own pretraining starts at 0.07).
        temporal_init_std: 0 keeps the paper's zero temporal embedding (the model equals the image CLIP at
            step 0); random towers have nothing to preserve, and a frame-order signal from the start lets
            them learn the direction of time sooner.
        compile: ``torch.compile`` each transformer block when the model is set up (same results, faster steps
            after the first ones compile).
        grad_checkpointing: recompute block activations in backward (less memory, more compute).
    """

    def __init__(
        self,
        model: str = "ViT-B-16",
        pretrained: str | None = None,
        num_frames: int = 8,
        drop_ratio: float = 0.9,
        drop_mode: Literal["random", "tube"] = "random",
        pool: Literal["cls", "mean"] = "cls",
        text_mask_prob: float = 0.5,
        vtc_weight: float = 1.0,
        mlm_weight: float = 1.0,
        fusion_layers: int = 2,
        fusion_heads: int = 8,
        unmasked_fraction: float = 0.0,
        reverse_negatives: float = 0.0,
        hard_negative_weight: float = 0.0,
        time_order_warmup: float = 0.0,
        time_order_ramp: float = 0.0,
        temperature_init: float = 0.01,
        temporal_init_std: float = 0.0,
        grad_checkpointing: bool = False,
        lr: float = 4e-4,
        weight_decay: float = 0.2,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup: float = 0.05,
        min_lr_ratio: float = 0.0,
        temporal_eval: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup, min_lr_ratio, temporal_eval, compile)
        self.save_hyperparameters()
        if (time_order_warmup > 0 or time_order_ramp > 0) and (hard_negative_weight <= 0 or reverse_negatives <= 0):
            raise ValueError(
                "time_order_warmup and time_order_ramp train the time-order term first: they need "
                f"hard_negative_weight > 0 and reverse_negatives > 0 (got {hard_negative_weight}, {reverse_negatives})"
            )
        self.video, self.text = create_towers(
            model, pretrained, num_frames=num_frames, drop_ratio=drop_ratio, drop_mode=drop_mode, pool=pool
        )
        if temporal_init_std > 0:
            torch.nn.init.normal_(self.video.temporal_embedding, std=temporal_init_std)
        self.vtc = VideoTextContrastiveLoss(init_scale=1 / temperature_init)
        self.fusion = (
            CrossModalFusion(self.text.token_embedding, self.video.width, fusion_layers, fusion_heads)
            if mlm_weight > 0
            else None
        )
        if grad_checkpointing:
            self.video.set_grad_checkpointing(True)
            self.text.set_grad_checkpointing(True)

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video(video)

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.text(text).embedding

    def phase_weight(self, progress: float) -> float:
        """Scale of the VTC and MLM weights: 0 in the time-order warmup, then a linear ramp to 1."""
        h = self.hparams
        if progress < h.time_order_warmup:
            return 0.0
        if h.time_order_ramp > 0:
            return min(1.0, (progress - h.time_order_warmup) / h.time_order_ramp)
        return 1.0

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        progress = self.training_progress()
        scale = self.phase_weight(progress)
        warming = scale == 0.0
        unmasked = warming or progress >= 1 - h.unmasked_fraction
        self.video.drop_ratio = 0.0 if unmasked else h.drop_ratio
        both = append_reversed_clips(batch, h.reverse_negatives)
        if h.time_order_warmup > 0 and both.count == 0:
            raise ValueError(
                "time_order_warmup needs time-reversed captions: the batch has no 'reverse_text' (shards "
                "without a 'reverse_caption' field); set model.time_order_warmup=0 or use shards that have one"
            )
        text, text_mask = self.text.trim_padding(both.text, both.text_mask)
        tokens = self.video.forward_features(both.video, paired_keep_indices(self.video, both.video, both.size))
        video_embedding, text_embedding = self.video.forward_head(tokens), self.text(text).embedding
        vtc = self.vtc(video_embedding, text_embedding, caption_ids(both.captions, text.device))
        loss = scale * h.vtc_weight * vtc
        logs = {"train/vtc": vtc, "train/temperature": 1 / self.vtc.logit_scale().detach()}
        if h.hard_negative_weight > 0:
            order = time_order_loss(both.size, video_embedding, text_embedding, self.vtc.logit_scale())
            if order is not None:
                loss = loss + h.hard_negative_weight * order
                logs["train/hard_negative"] = order
        if self.fusion is not None and not warming:
            masked, labels = mask_text_tokens(text, text_mask, h.text_mask_prob)
            fused = self.fusion(self.text(masked).tokens, tokens, text_mask)
            mlm = masked_lm_loss(self.fusion.mlm_logits(fused, labels), labels)
            loss = loss + scale * h.mlm_weight * mlm
            logs["train/mlm"] = mlm
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=both.video.shape[0])
        return loss
