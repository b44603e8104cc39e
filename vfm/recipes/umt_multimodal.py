"""Recipe 2, stage 2: Unmasked Teacher multimodal pretraining (arXiv 2303.16058).

The stage-1 student (``init_from``) keeps its alignment to the frozen teacher (UTA) while it learns language
with a BERT whose last layers cross-attend to video: video-text contrastive (VTC), matching with hard
negatives (VTM) and masked language modelling (MLM). Image-text and video-text batches alternate by step
(``data.image_shards``); images are 1-frame clips masked at ``image_mask_ratio``, videos at
``video_mask_ratio``. Zero-shot retrieval ranks by VTC, then re-ranks each query's top ``rerank_k`` with the
VTM head (reported as ``*_reranked``).
"""

from __future__ import annotations

import logging
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from vfm.losses import VideoTextContrastiveLoss, masked_lm_loss
from vfm.losses.contrastive import gather_no_grad, gather_with_grad
from vfm.losses.matching import global_hard_negatives, matching_loss, sample_hard_negatives
from vfm.models import VideoViT, mask_text_tokens
from vfm.models.bert import build_bert_fusion
from vfm.models.masking import sample_keep_indices
from vfm.models.unmasked_teacher import MaskMode, TeacherAlignment
from vfm.recipes.base import VideoTextRecipe, caption_ids
from vfm.recipes.umt_rerank import RerankStore
from vfm.recipes.umt_student import compile_umt, configure_adamw_cosine, load_umt_init, student_config
from vfm.recipes.umt_teacher import build_teacher, check_teacher, record_teacher

log = logging.getLogger(__name__)
# BERT-base, random: used when no local BERT folder is given (tests and demo pass a tiny config instead)
BERT_BASE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
}


class UnmaskedTeacherMultimodal(VideoTextRecipe):
    """UMT stage 2: student ``video`` + ``text`` (BERT with fusion layers) + projections, matching head, UTA.

    Args:
        student: `VideoViT` sizes over ViT-B/16 (as in stage 1; must match ``init_from``).
        init_from: stage-1 (or stage-2) checkpoint, or a released UMT file: every tensor whose name matches
            is loaded (student, alignment heads, ...), the rest is reported. Read in ``setup('fit')``, before
            Lightning restores ``--ckpt_path``: a resumed run keeps its checkpoint's weights (the file must still
            be readable; ``--model.init_from null`` resumes without it).
        teacher, teacher_model, teacher_attention, teacher_autocast, align_layers: the frozen teacher of UTA
            (None: no UTA and no semantic masking).
        text_model: a local BERT folder (saved by transformers; `from_pretrained`, offline) or a BertConfig
            dict; None builds a random BERT-base.
        fusion_layer: first BERT layer with cross-attention to video (9 of 12 for BERT-base).
        embed_dim: width of the contrastive embeddings.
        vtc_weight, vtm_weight, mlm_weight, uta_weight: loss weights (0 skips a loss's work).
        temperature_init, temperature_range: contrastive temperature and its clamp.
        text_mask_prob: BERT masking probability for MLM.
        video_mask_ratio, image_mask_ratio, mask_mode: patches hidden from the student per frame; ``attention``
            needs the teacher; ``random``, ``tube``, ``per_frame`` do not.
        vtm_negatives: ``global`` draws VTM hard negatives from the all-gathered batch (DDP), ``local`` from
            this rank's batch only (UMT's choice; no token gather).
        rerank_k: re-rank each query's top k with the VTM head in evaluation (0: off).
        lr, lr_reference_batch, weight_decay, betas, warmup, min_lr_ratio: AdamW + warmup cosine.
        compile: ``torch.compile`` each transformer block (student, BERT, teacher) when the model is set up.
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
        text_model: str | dict[str, Any] | None = None,
        fusion_layer: int = 9,
        embed_dim: int = 512,
        vtc_weight: float = 1.0,
        vtm_weight: float = 1.0,
        mlm_weight: float = 1.0,
        uta_weight: float = 1.0,
        temperature_init: float = 0.07,
        temperature_range: tuple[float, float] = (0.001, 0.5),
        text_mask_prob: float = 0.5,
        video_mask_ratio: float = 0.8,
        image_mask_ratio: float = 0.5,
        mask_mode: MaskMode = "attention",
        vtm_negatives: Literal["global", "local"] = "global",
        rerank_k: int = 128,
        drop_path_rate: float = 0.1,
        grad_checkpointing: bool = False,
        lr: float = 1e-4,
        lr_reference_batch: int | None = None,
        weight_decay: float = 0.02,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.1,
        min_lr_ratio: float = 0.01,
        temporal_eval: bool = True,
        compile: bool = False,
    ) -> None:
        super().__init__(lr, weight_decay, betas, warmup, min_lr_ratio, temporal_eval, compile)
        self.save_hyperparameters()
        self.video_config = student_config(student)
        self.video = VideoViT(**self.video_config, drop_path_rate=drop_path_rate)
        self.video.set_grad_checkpointing(grad_checkpointing)
        width = self.video.width
        self.pool_norm = nn.LayerNorm(width, eps=1e-6)
        self.vision_proj = nn.Linear(width, embed_dim)
        self.text = build_bert_fusion(text_model if text_model is not None else BERT_BASE, fusion_layer, width)
        self.text_proj = nn.Linear(self.text.width, embed_dim)
        self.itm_head = nn.Linear(self.text.width, 2)
        low, high = temperature_range
        self.vtc = VideoTextContrastiveLoss(1 / temperature_init, max_scale=1 / low, min_scale=1 / high)
        self.align: TeacherAlignment | None = None
        if teacher is not None and uta_weight > 0:
            frozen = build_teacher(
                teacher,
                teacher_model,
                teacher_attention,
                align_layers,
                teacher_autocast,
                self.video_config["num_frames"],
            )
            self.align = TeacherAlignment(frozen, width, self.video.ln_post.eps)
            self.align.check_student(self.video, self.video_config["image_size"])
        self.special_ids = {"pad": 0, "cls": 101, "sep": 102, "mask": 103}  # BERT's; `use_tokenizer` updates
        self.rerank_store = RerankStore()

    # ---- set-up ----------------------------------------------------------------------------------
    def use_tokenizer(self, tokenizer) -> None:
        """Take the special token ids of the HF tokenizer the batches are made with."""
        if len(tokenizer) > self.text.vocab_size:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens, the BERT vocabulary {self.text.vocab_size}")
        ids = {
            "pad": tokenizer.pad_token_id,
            "cls": tokenizer.cls_token_id,
            "sep": tokenizer.sep_token_id,
            "mask": tokenizer.mask_token_id,
        }
        if any(value is None for value in ids.values()):
            raise ValueError(f"the tokenizer lacks BERT special tokens: {ids}")
        self.special_ids = ids

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.mask_mode == "attention" and self.align is None:
            raise ValueError("mask_mode='attention' needs the teacher (and uta_weight > 0): or use per_frame / tube")
        data = getattr(self.trainer, "datamodule", None)
        tokenizer = getattr(getattr(data, "tokenizer", None), "_hf", None)
        if data is not None and tokenizer is None:
            raise ValueError("UMT stage 2 needs a BERT tokenizer: set data.tokenizer to a local tokenizer folder")
        if tokenizer is not None:
            self.use_tokenizer(tokenizer)
        if stage == "fit" and self.hparams.init_from:
            self.load_init(self.hparams.init_from)

    def load_init(self, path: str) -> None:
        load_umt_init(self, path)

    def configure_model(self) -> None:
        compile_umt(self)  # the teacher's blocks too

    # ---- towers ----------------------------------------------------------------------------------
    def video_tokens(self, video: torch.Tensor, keep: torch.Tensor | None = None, align_layers: int = 0):
        """(tokens after the final norm [B, N, D], embedding [B, E], outputs of the last `align_layers`)."""
        if align_layers:
            x, layers = self.video.forward_intermediates(video, indices=align_layers, keep=keep)
        else:
            x, layers = self.video.forward_features(video, keep), []
        tokens = self.video.ln_post(x)
        return tokens, self.vision_proj(self.pool_norm(tokens.mean(1))), layers

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        return self.video_tokens(video)[1]

    def text_features(self, text: torch.Tensor, text_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.text.encode(text, text_mask)
        return features, self.text_proj(features[:, 0])

    def encode_text(self, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return self.text_features(text, text_mask)[1]

    def matching_logits(self, text_features, text_mask, video_tokens) -> torch.Tensor:
        return self.itm_head(self.text.fuse(text_features, text_mask, video_tokens)[:, 0])

    # ---- training --------------------------------------------------------------------------------
    def _keep(self, video: torch.Tensor):
        """(kept patch indices or None, distillation targets or None) for this batch's modality."""
        h = self.hparams
        ratio = h.image_mask_ratio if video.shape[1] == 1 else h.video_mask_ratio
        if self.align is not None:
            distill = self.align.distill_targets(video, ratio, h.mask_mode)
            return distill.keep, distill
        if ratio == 0:
            return None, None
        frames, patches = video.shape[1], self.video._patches(video)
        return sample_keep_indices(h.mask_mode, video.shape[0], frames, patches, ratio, device=video.device), None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        h = self.hparams
        video, text, text_mask = batch["video"], batch["text"], batch["text_mask"]
        ids = caption_ids(batch["caption"], text.device)
        keep, distill = self._keep(video)
        tokens, video_embedding, layers = self.video_tokens(video, keep, self.align.num_layers if distill else 0)
        features, text_embedding = self.text_features(text, text_mask)
        losses = {"vtc": self.vtc(video_embedding, text_embedding, ids)}
        if h.vtm_weight > 0:
            losses["vtm"] = self.vtm_loss(tokens, video_embedding, features, text_mask, text_embedding, ids)
        if h.mlm_weight > 0:
            losses["mlm"] = self.mlm_loss(text, text_mask, tokens)
        if distill is not None:
            losses["uta"] = self.align.loss(self.video, layers, video, distill)
        loss = sum(getattr(h, f"{name}_weight") * value for name, value in losses.items())
        modality = "image" if video.shape[1] == 1 else "video"
        logs = {f"train/{name}": value for name, value in losses.items()}
        logs |= {f"train/{modality}_loss": loss, "train/loss": loss}
        self.log_dict(logs, prog_bar=False, batch_size=video.shape[0])
        return loss

    def vtm_loss(self, video_tokens, video_embedding, text_features, text_mask, text_embedding, ids):
        """Matching over B positives, B (video, hard negative caption) and B (hard negative video, caption)."""
        scale = self.vtc.logit_scale().detach()
        if self.hparams.vtm_negatives == "global":
            negative_text, negative_video = global_hard_negatives(video_embedding, text_embedding, ids, scale)
            all_features, all_masks = gather_with_grad(text_features), gather_no_grad(text_mask)
            all_tokens = gather_with_grad(video_tokens)
        else:
            video_n, text_n = F.normalize(video_embedding.float(), dim=-1), F.normalize(text_embedding.float(), dim=-1)
            similarity = scale * video_n @ text_n.T
            negative_text = sample_hard_negatives(similarity.detach(), ids, ids)
            negative_video = sample_hard_negatives(similarity.T.detach(), ids, ids)
            all_features, all_masks, all_tokens = text_features, text_mask, video_tokens
        features = torch.cat([text_features, all_features[negative_text], text_features])
        masks = torch.cat([text_mask, all_masks[negative_text], text_mask])
        tokens = torch.cat([video_tokens, video_tokens, all_tokens[negative_video]])
        batch = video_tokens.shape[0]
        labels = torch.cat([torch.ones(batch), torch.zeros(2 * batch)]).long().to(video_tokens.device)
        return matching_loss(self.matching_logits(features, masks, tokens), labels)

    def mlm_loss(self, text: torch.Tensor, text_mask: torch.Tensor, video_tokens: torch.Tensor) -> torch.Tensor:
        ids = self.special_ids
        masked, labels = mask_text_tokens(
            text,
            text_mask,
            self.hparams.text_mask_prob,
            mask_token_id=ids["mask"],
            vocab_size=self.text.vocab_size,
            special_ids=(ids["pad"], ids["cls"], ids["sep"]),
        )
        fused = self.text.fuse(self.text.encode(masked, text_mask), text_mask, video_tokens)
        return masked_lm_loss(self.text.mlm_logits(fused, labels), labels)

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: dict) -> None:
        video = batch["video"]
        tokens, video_embedding, _ = self.video_tokens(video)
        features, text_embedding = self.text_features(batch["text"], batch["text_mask"])
        temporal = self.hparams.temporal_eval and video.shape[1] > 1
        reverse = batch.get("reverse_text")
        self.evaluator.add(
            batch["caption"],
            video=video_embedding,
            text=text_embedding,
            reverse_text=self.encode_text(reverse, batch["reverse_text_mask"])
            if temporal and reverse is not None
            else None,
            reversed_video=self.encode_video(video.flip(1)) if temporal else None,
        )
        if self.hparams.rerank_k > 0:
            self.rerank_store.add(
                batch["caption"], video_embedding, text_embedding, tokens, features, batch["text_mask"]
            )

    def _log_eval(self, stage: str) -> None:
        metrics = self.evaluator.compute()
        if self.hparams.rerank_k > 0 and len(self.rerank_store):
            metrics |= self.rerank_store.reranked_metrics(self.matching_logits, self.hparams.rerank_k)
        self.log_dict({f"{stage}/{k}": v for k, v in metrics.items()}, sync_dist=False, rank_zero_only=False)

    # ---- optimisation and checkpoints ------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        return configure_adamw_cosine(self)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["video_config"] = dict(self.video_config)
        record_teacher(checkpoint, self.align.teacher if self.align is not None else None)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        check_teacher(checkpoint, self.align.teacher if self.align is not None else None)
