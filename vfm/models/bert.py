"""BERT text encoder (transformers) whose last layers cross-attend to video: UMT / ALBEF-style fusion.

Layers ``[0, fusion_layer)`` encode the caption alone (its [CLS] feature is the text embedding of the
contrastive loss); layers ``[fusion_layer, L)`` add a cross-attention to video tokens after their
self-attention (matching head, masked language modelling). Names follow the released UMT checkpoints and
HF's `BertForMaskedLM`: ``bert.embeddings``, ``bert.encoder.layer.{i}`` (with ``crossattention`` in the
fusion layers), ``cls.predictions`` (decoder tied to the word embeddings).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import BertConfig, BertForMaskedLM
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.bert.modeling_bert import BertLayer

IGNORE_INDEX = -100


class BertFusionEncoder(nn.Module):
    """A `BertForMaskedLM`'s parts, its layers from `fusion_layer` on given cross-attention to video tokens.

    Args:
        masked_lm: the BERT to take (pretrained or built from a config); its pooler is not used.
        fusion_layer: index of the first layer that cross-attends (9 of 12 for BERT-base).
        video_width: width of the video tokens (keys and values of the cross-attention read it).
    """

    def __init__(self, masked_lm: BertForMaskedLM, fusion_layer: int, video_width: int) -> None:
        super().__init__()
        config = masked_lm.config
        if not 0 <= fusion_layer < config.num_hidden_layers:
            raise ValueError(f"fusion_layer {fusion_layer} outside [0, {config.num_hidden_layers})")
        self.config, self.fusion_layer = config, fusion_layer
        self.bert, self.cls = masked_lm.bert, masked_lm.cls
        self.bert.pooler = None
        for index in range(fusion_layer, config.num_hidden_layers):
            self.bert.encoder.layer[index] = _cross_attention_layer(
                self.bert.encoder.layer[index], config, index, video_width
            )
        self.tie_weights()

    @property
    def width(self) -> int:
        return self.config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def tie_weights(self) -> None:
        """The MLM decoder is the word embedding table (one Parameter), as in BERT."""
        predictions = self.cls.predictions
        predictions.decoder.weight = self.bert.embeddings.word_embeddings.weight
        predictions.decoder.bias = predictions.bias

    def _mask(self, attention_mask: torch.Tensor | None, x: torch.Tensor, keys: torch.Tensor | None = None):
        if attention_mask is None:
            return None
        return create_bidirectional_mask(
            config=self.config, inputs_embeds=x, attention_mask=attention_mask.long(), encoder_hidden_states=keys
        )

    def encode(self, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids [B, L] -> features [B, L, W] of the text-only layers ([:, 0] is [CLS])."""
        x = self.bert.embeddings(input_ids=text)
        mask = self._mask(text_mask, x)
        for layer in self.bert.encoder.layer[: self.fusion_layer]:
            x = layer(x, mask)
        return x

    def fuse(
        self,
        text_features: torch.Tensor,
        text_mask: torch.Tensor | None,
        video_tokens: torch.Tensor,
        video_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`encode`'s output attended by the fusion layers to video tokens [B, N, D] -> [B, L, W]."""
        x = text_features
        mask = self._mask(text_mask, x)
        cross_mask = self._mask(video_mask, x, video_tokens)
        for layer in self.bert.encoder.layer[self.fusion_layer :]:
            x = layer(x, mask, video_tokens, encoder_attention_mask=cross_mask)
        return x

    def mlm_logits(self, fused: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits; with `labels`, only at the masked positions ([M, V])."""
        if labels is not None:
            fused = fused[labels != IGNORE_INDEX]
        return self.cls(fused)


def _cross_attention_layer(layer: BertLayer, config: BertConfig, index: int, video_width: int) -> BertLayer:
    """A copy of `layer` with a new cross-attention block (HF builds those only for decoder configs)."""
    cross_config = copy.deepcopy(config)
    cross_config.is_decoder, cross_config.add_cross_attention = True, True
    fused = BertLayer(cross_config, layer_idx=index)
    missing = fused.load_state_dict(layer.state_dict(), strict=False).missing_keys
    assert all(key.startswith("crossattention.") for key in missing), missing
    fused.attention.self.is_causal = False  # the decoder flag is only how HF adds cross-attention
    cross = fused.crossattention.self
    if video_width != config.hidden_size:  # HF's keys read hidden_size wide inputs; UMT's read the video width
        cross.key = nn.Linear(video_width, cross.all_head_size)
        cross.value = nn.Linear(video_width, cross.all_head_size)
    for module in fused.crossattention.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return fused.to(next(layer.parameters()).dtype)


def build_bert_fusion(text_model: str | dict[str, Any], fusion_layer: int, video_width: int) -> BertFusionEncoder:
    """From a local folder (`BertForMaskedLM.from_pretrained`, offline) or a `BertConfig` dict (random)."""
    if isinstance(text_model, dict):
        config = BertConfig(**text_model)
        config._attn_implementation = "sdpa"
        masked_lm = BertForMaskedLM(config)
    else:
        path = Path(text_model).expanduser()
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"BERT folder {str(path)!r} has no config.json: give a local folder saved by transformers "
                "(config.json + weights) or a BertConfig dict (nothing is downloaded)"
            )
        masked_lm = BertForMaskedLM.from_pretrained(str(path), local_files_only=True, attn_implementation="sdpa")
    return BertFusionEncoder(masked_lm, fusion_layer, video_width)
