"""Retrieval fine-tuning: video-text contrastive training of the towers of a checkpoint, evaluated with the
shared zero-shot retrieval and time-order evaluation (`VideoTextRecipe`).

The video-text matching loss (VTM) joins when the checkpoint carries a matching head (``vtm_head.``) and
the fusion module it reads (``fusion.``), as a multimodal (UMT stage-2 style) recipe saves them.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from vfm.losses import VideoTextContrastiveLoss
from vfm.losses.matching import matching_loss, matching_pairs
from vfm.models import CrossModalFusion, VideoViT, load_weights
from vfm.models.convert import ConvertedWeights, count_blocks, strip_prefix
from vfm.models.interchange import (
    build_text_encoder,
    is_complete_video_config,
    resolve_video_config,
    text_config_from_model,
)
from vfm.recipes.base import VideoTextRecipe, caption_ids
from vfm.recipes.checkpoints import load_init_weights


class RetrievalFinetune(VideoTextRecipe):
    """VTC (+ VTM) fine-tuning from the ``video.`` and ``text.`` towers of any recipe or imported CLIP/ViCLIP.

    Args:
        init_from: checkpoint of a recipe with both towers, or an open_clip / ViCLIP weights file.
        model: open_clip architecture of the towers when ``init_from`` does not record one.
        video_config: VideoViT arguments over the checkpoint's (e.g. ``drop_ratio: 0.5`` for cheaper steps).
        context_length: caption tokens the text tower holds (default: the checkpoint's table).
        temperature_init: contrastive temperature when the checkpoint has none (``vtc.``) to continue from.
        vtm: use the matching loss; default: when the checkpoint has ``vtm_head.`` and ``fusion.`` weights.
        vtm_weight, fusion_layers, fusion_heads: the matching loss's weight and its fusion module's size
            (defaults: read from the checkpoint).
    """

    def __init__(
        self,
        init_from: str | None = None,
        model: str | dict | None = None,
        video_config: dict[str, Any] | None = None,
        context_length: int | None = None,
        temperature_init: float = 0.01,
        vtm: bool | None = None,
        vtm_weight: float = 1.0,
        fusion_layers: int | None = None,
        fusion_heads: int | None = None,
        grad_checkpointing: bool = False,
        lr: float = 1e-5,
        weight_decay: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.98),
        warmup: float = 0.1,
        min_lr_ratio: float = 0.0,
        temporal_eval: bool = True,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup, min_lr_ratio, temporal_eval)
        self.save_hyperparameters()
        rebuilt = model is not None and is_complete_video_config(video_config) and vtm is not None
        self._init_weights = load_init_weights(init_from) if init_from and not rebuilt else None
        self._resolve_hparams(self._init_weights)
        h = self.hparams
        self.video = VideoViT(**h.video_config)
        text_config = text_config_from_model(h.model)
        text_config["text_cfg"]["context_length"] = h.context_length
        self.text = build_text_encoder(text_config)
        self.vtc = VideoTextContrastiveLoss(init_scale=1 / temperature_init)
        self.fusion = self.vtm_head = None
        if h.vtm:
            self.fusion = CrossModalFusion(self.text.token_embedding, self.video.width, h.fusion_layers, h.fusion_heads)
            self.vtm_head = nn.Linear(self.text.width, 2)
        self.video.set_grad_checkpointing(grad_checkpointing)
        self.text.set_grad_checkpointing(grad_checkpointing)

    def _resolve_hparams(self, weights: ConvertedWeights | None) -> None:
        """Fill in the architecture from the init weights and save it, so checkpoints rebuild without them."""
        h = self.hparams
        h.model = h.model or (weights.model if weights is not None else None)
        if h.model is None:
            raise ValueError("the text tower needs an open_clip architecture: give model= or a checkpoint that has one")
        h.video_config = resolve_video_config(weights, h.model, h.video_config)
        state = weights.state if weights is not None else {}
        if h.context_length is None:  # the checkpoint's table decides (long-video runs may have extended it)
            table = state.get("text.positional_embedding")
            default = text_config_from_model(h.model)["text_cfg"]["context_length"]
            h.context_length = table.shape[0] if table is not None else default
        if h.vtm is None:
            h.vtm = any(k.startswith("vtm_head.") for k in state) and any(k.startswith("fusion.") for k in state)
        source = weights.hparams if weights is not None else {}
        h.fusion_layers = h.fusion_layers or count_blocks(state, "fusion.layers.") or source.get("fusion_layers", 2)
        h.fusion_heads = h.fusion_heads or source.get("fusion_heads", 8)

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from:
            self._load_init(self._init_weights or load_init_weights(self.hparams.init_from))
            self._init_weights = None

    def _load_init(self, weights: ConvertedWeights) -> None:
        towers = {"video.": self.video, "text.": self.text, "vtc.": self.vtc}
        if self.fusion is not None:
            towers |= {"fusion.": self.fusion, "vtm_head.": self.vtm_head}
        loaded = []
        for prefix, module in towers.items():
            state = strip_prefix(weights.state, prefix)
            if state:
                report = load_weights(module, state)
                loaded.append(f"{prefix} {len(report.loaded)} tensors (left at init: {report.missing or 'none'})")
            elif prefix in ("video.", "text."):
                raise KeyError(f"no {prefix!r} tower in {self.hparams.init_from}; it has {weights.prefixes()}")
        vtm = "VTM on" if self.fusion is not None else "VTC only (no vtm_head. + fusion. in the checkpoint)"
        rank_zero_info(f"init_from {self.hparams.init_from} ({weights.format}): {'; '.join(loaded)}; {vtm}")

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video(video)

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.text(text).embedding

    def _matching(self, video_tokens, text_features, batch: dict, similarity, ids) -> torch.Tensor:
        video_index, text_index, labels = matching_pairs(similarity.detach(), ids)
        text, text_mask = batch["text"][text_index], batch["text_mask"][text_index]
        fused = self.fusion(text_features.tokens[text_index], video_tokens[video_index], text_mask)
        eot = text.argmax(-1)  # CLIP's EOT holds the largest id: the pooled position of the caption
        logits = self.vtm_head(fused[torch.arange(len(text), device=text.device), eot])
        return matching_loss(logits, labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        tokens = self.video.forward_features(batch["video"])
        video, text = self.video.forward_head(tokens), self.text(batch["text"])
        ids = caption_ids(batch["caption"], video.device)
        loss = vtc = self.vtc(video, text.embedding, ids)
        logs = {"train/vtc": vtc, "train/temperature": 1 / self.vtc.logit_scale().detach()}
        if self.fusion is not None:
            similarity = nn.functional.normalize(video, dim=-1) @ nn.functional.normalize(text.embedding, dim=-1).T
            logs["train/vtm"] = vtm = self._matching(tokens, text, batch, similarity, ids)
            loss = loss + self.hparams.vtm_weight * vtm
        logs["train/loss"] = loss
        self.log_dict(logs, prog_bar=True, batch_size=video.shape[0])
        return loss
