"""Transformer layers shared by the video ViT and the fusion module.

Parameter names follow open_clip's `ResidualAttentionBlock` (`ln_1`, `attn.in_proj_weight`, `attn.out_proj`,
`ls_1`, `ln_2`, `mlp.c_fc`, `mlp.c_proj`, `ls_2`) so that open_clip / OpenAI CLIP weights load by name,
while the forward is ours: `F.scaled_dot_product_attention`, drop path, and optional factorised attention.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


class QuickGELU(nn.Module):
    """The sigmoid GELU approximation that OpenAI CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class LayerScale(nn.Module):
    """Per-channel residual scale; `gamma` matches open_clip's name."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Self-attention with `nn.MultiheadAttention`'s parameter layout, computed with SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim)) if qkv_bias else None
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        batch, length, dim = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        qkv = qkv.view(batch, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv.unbind(0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        q, k, v = self._qkv(x)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)  # under autocast q is bf16 while the bias was built in fp32
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))

    def first_token_attention(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Softmax attention of token 0 (CLS) to every other token, averaged over heads: [B, L - 1].

        The attention-guided masking of UMT samples patches in proportion to this; only one query row is
        computed, so it costs a fraction of a full attention map.
        """
        q, k, _ = self._qkv(x)
        logits = (q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if attn_mask is not None:
            logits = logits + attn_mask[..., :1, :]  # the CLS query's row of the additive mask
        return logits.float().softmax(-1).mean(1)[:, 0, 1:]


def _mlp(dim: int, mlp_ratio: float, act_layer: type[nn.Module]) -> nn.Sequential:
    hidden = int(dim * mlp_ratio)
    return nn.Sequential(
        OrderedDict([("c_fc", nn.Linear(dim, hidden)), ("gelu", act_layer()), ("c_proj", nn.Linear(hidden, dim))])
    )


class Block(nn.Module):
    """Pre-norm transformer block over tokens laid out as [prefix (CLS), frame 0 patches, frame 1, ...].

    `factorized=True` adds a temporal attention branch after the spatial one (TimeSformer-style divided
    attention): spatial attention runs within each frame (the CLS token is copied into every frame and the
    copies averaged afterwards), temporal attention runs across frames at each kept-token slot. The temporal
    branch starts as a copy of the spatial one behind a tanh gate initialised at 0, so a factorised model
    built from an image CLIP computes exactly the image model at step 0.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        ls_init_value: float | None = None,
        act_layer: type[nn.Module] = nn.GELU,
        norm_eps: float = 1e-5,
        drop_path: float = 0.0,
        factorized: bool = False,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads)
        self.ls_1 = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.ln_2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = _mlp(dim, mlp_ratio, act_layer)
        self.ls_2 = LayerScale(dim, ls_init_value) if ls_init_value is not None else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.factorized = factorized
        if factorized:
            self.temporal_ln = nn.LayerNorm(dim, eps=norm_eps)
            self.temporal_attn = Attention(dim, num_heads)
            self.temporal_gate = nn.Parameter(torch.zeros(1))

    @torch.no_grad()
    def init_temporal_from_spatial(self) -> None:
        """Copy the spatial attention into the temporal branch (call after loading image weights)."""
        if self.factorized:
            self.temporal_ln.load_state_dict(self.ln_1.state_dict())
            self.temporal_attn.load_state_dict(self.attn.state_dict())

    def forward(
        self,
        x: torch.Tensor,
        num_frames: int = 1,
        num_prefix_tokens: int = 1,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """`attn_mask` (additive, broadcast to [B, heads, L, L]) applies to joint attention only."""
        if self.factorized:
            x = self._divided_attention(x, num_frames, num_prefix_tokens)
        else:
            x = x + self.drop_path(self.ls_1(self.attn(self.ln_1(x), attn_mask)))
        return x + self.drop_path(self.ls_2(self.mlp(self.ln_2(x))))

    def _divided_attention(self, x: torch.Tensor, num_frames: int, num_prefix: int) -> torch.Tensor:
        batch, _, dim = x.shape
        prefix, patches = x[:, :num_prefix], x[:, num_prefix:].reshape(batch * num_frames, -1, dim)
        per_frame = torch.cat([prefix.repeat_interleave(num_frames, 0), patches], 1)
        y = self.attn(self.ln_1(per_frame))
        y_prefix = y[:, :num_prefix].reshape(batch, num_frames, num_prefix, dim).mean(1)
        y = torch.cat([y_prefix, y[:, num_prefix:].reshape(batch, -1, dim)], 1)
        x = x + self.drop_path(self.ls_1(y))

        prefix, patches = x[:, :num_prefix], x[:, num_prefix:]
        slots = patches.shape[1] // num_frames
        # [B, T*K, D] -> [B*K, T, D]: one temporal sequence per kept-token slot
        seq = patches.reshape(batch, num_frames, slots, dim).transpose(1, 2).reshape(-1, num_frames, dim)
        z = self.temporal_attn(self.temporal_ln(seq)) * torch.tanh(self.temporal_gate)
        z = z.reshape(batch, slots, num_frames, dim).transpose(1, 2).reshape(batch, -1, dim)
        return torch.cat([prefix, patches + self.drop_path(z)], 1)


class CrossAttention(nn.Module):
    """Multi-head attention of `x` to a separate `context` sequence, computed with SDPA."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(dim, dim)
        self.kv_proj = nn.Linear(context_dim or dim, 2 * dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`context_mask`: bool [B, Lc], True where a context token may be attended to."""
        batch, length, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        q = self.q_proj(x).view(batch, length, heads, head_dim).transpose(1, 2)
        k, v = self.kv_proj(context).view(batch, -1, 2, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        mask = context_mask[:, None, None, :] if context_mask is not None else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out_proj(out.transpose(1, 2).flatten(2))


def sincos_1d(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sin-cos embedding [len(positions), dim] (the Transformer / MAE table)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None]
    return torch.cat([angles.sin(), angles.cos()], 1).float()


def sincos_3d(num_frames: int, grid: tuple[int, int], dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Separable 3D sin-cos embedding split as (spatial [H*W, dim], temporal [T, dim]).

    About 3/4 of the channels encode (y, x) and the rest t; the two parts occupy disjoint channels, so their
    sum is the concatenated 3D embedding, and it is exact (no interpolation) for any T and grid size.
    """
    spatial_dim = (3 * dim // 4) // 4 * 4
    temporal_dim = dim - spatial_dim
    if temporal_dim % 2:
        raise ValueError(f"sin-cos 3D embedding needs an even width, got {dim}")
    ys, xs = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    half = spatial_dim // 2
    spatial = torch.cat([sincos_1d(ys.flatten(), half), sincos_1d(xs.flatten(), half)], 1)
    temporal = sincos_1d(torch.arange(num_frames), temporal_dim)
    spatial = F.pad(spatial, (0, temporal_dim))
    temporal = F.pad(temporal, (spatial_dim, 0))
    return spatial, temporal
