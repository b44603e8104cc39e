"""Light cross-modal fusion: text tokens self-attend and attend to video tokens, then an MLM head.

The post-pretraining recipe masks caption tokens and predicts them from the fused features. CLIP's text
tower is causal, so the fusion self-attention is bidirectional: a masked word sees its right context here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from timm.layers import trunc_normal_
from torch import nn

from .layers import Attention, CrossAttention
from .text import IGNORE_INDEX


class FusionLayer(nn.Module):
    """Pre-norm block: bidirectional self-attention (padding masked), cross-attention to video, MLP."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.ln_cross = nn.LayerNorm(width)
        self.cross_attn = CrossAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", nn.GELU()),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def forward(self, text: torch.Tensor, video: torch.Tensor, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        key_mask = text_mask[:, None, None, :].bool() if text_mask is not None else None
        text = text + self.self_attn(self.ln_1(text), attn_mask=key_mask)
        text = text + self.cross_attn(self.ln_cross(text), video)
        return text + self.mlp(self.ln_2(text))


class MLMHead(nn.Module):
    """BERT's prediction head; the output layer *is* the text token embedding (shared parameter)."""

    def __init__(self, token_embedding: nn.Embedding) -> None:
        super().__init__()
        vocab_size, width = token_embedding.weight.shape
        self.transform = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.LayerNorm(width))
        self.decoder = nn.Linear(width, vocab_size, bias=False)
        self.decoder.weight = token_embedding.weight  # tied: one Parameter, updated by both uses
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(hidden)) + self.bias


class CrossModalFusion(nn.Module):
    """Fuse text token features [B, L, W] with video tokens [B, N, D]; predict masked tokens."""

    def __init__(
        self,
        token_embedding: nn.Embedding,
        video_width: int,
        layers: int = 2,
        heads: int = 8,
        mlp_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        width = token_embedding.weight.shape[1]
        # video tokens arrive before ln_post and possibly wider than the text: normalise, then project
        self.video_norm = nn.LayerNorm(video_width)
        self.video_proj = nn.Linear(video_width, width)
        self.layers = nn.ModuleList(FusionLayer(width, heads, mlp_ratio) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width)
        self.apply(_init_weights)
        self.mlm_head = MLMHead(token_embedding)  # built after init so the tied embedding is untouched

    def forward(
        self, text_tokens: torch.Tensor, video_tokens: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Fused text features [B, L, W]; `text_mask` (bool [B, L]) hides padding from self-attention."""
        video = self.video_proj(self.video_norm(video_tokens))
        x = text_tokens
        for layer in self.layers:
            x = layer(x, video, text_mask)
        return self.ln_final(x)

    def mlm_logits(self, fused: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Vocabulary logits; with `labels`, only at masked positions ([M, V], the vocab matmul is costly)."""
        if labels is not None:
            fused = fused[labels != IGNORE_INDEX]
        return self.mlm_head(fused)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
