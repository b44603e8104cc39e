"""Video ViT: an image ViT (open_clip layout) run over all frames of a clip, with token dropping.

Tokens of a clip are laid out [CLS, frame 0 patches, frame 1 patches, ...]. Each frame is patch-embedded by
the image tower's conv; the spatial position embedding is CLIP's (resampled to other image sizes) and a
temporal embedding, zero at init, is added per frame (resampled to any number of frames).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from .layers import Block, QuickGELU, sincos_3d
from .masking import DropMode, gather_tokens, per_frame_count, sample_keep_indices

AttentionMode = Literal["joint", "factorized", "frame"]


class Transformer(nn.Module):
    """A stack of blocks; exists so parameter names match open_clip (`transformer.resblocks.{i}`)."""

    def __init__(self, blocks: list[Block]) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(blocks)


def _take_indices(num_blocks: int, indices: int | list[int] | None) -> list[int]:
    """timm convention: None = all blocks, int n = the last n, list = those (negatives from the end)."""
    if indices is None:
        return list(range(num_blocks))
    if isinstance(indices, int):
        return list(range(num_blocks - indices, num_blocks))
    return sorted(i % num_blocks for i in indices)


class VideoViT(nn.Module):
    """Video encoder with joint space-time (or factorised / frame-wise) attention over kept tokens.

    Follows timm's backbone API: `forward_features`, `forward_intermediates`, `forward_head`,
    `set_grad_checkpointing`, `no_weight_decay`. `drop_ratio` > 0 drops patch tokens in training when no
    `keep` indices are given; passing `keep` (any mode) overrides it, e.g. attention-guided indices.

    Args:
        num_frames: frames the temporal embedding is stored for; other counts are interpolated.
        cls_token: prepend a CLS token (CLIP); the UMT student has none and pools by mean.
        pos_embed: `learned` (CLIP's spatial + zero-init temporal) or fixed 3D `sincos` (from scratch).
        pool: `cls` token or `mean` of patch tokens, followed by CLIP's `ln_post` and `proj`.
        attention: `joint` space-time, `factorized` (spatial then gated temporal) or `frame` (per-frame ViT,
            CLS averaged over frames at the end).
        cls_key_bias: joint attention only: weigh the CLS key as T copies (see `_cls_key_bias`).
        drop_path_rate: stochastic depth at the last block (linear in depth).
        drop_ratio: fraction of patch tokens dropped in training when `keep` is not given.
        drop_mode: `random` (per sample) or `tube` (same positions in every frame).
    """

    def __init__(
        self,
        image_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        mlp_ratio: float = 4.0,
        output_dim: int | None = 512,
        num_frames: int = 8,
        ls_init_value: float | None = None,
        quick_gelu: bool = False,
        norm_eps: float = 1e-5,
        ln_pre: bool = True,
        cls_token: bool = True,
        pos_embed: Literal["learned", "sincos"] = "learned",
        pool: Literal["cls", "mean"] = "cls",
        final_ln_after_pool: bool = False,
        attention: AttentionMode = "joint",
        cls_key_bias: bool = False,
        drop_path_rate: float = 0.0,
        drop_ratio: float = 0.0,
        drop_mode: DropMode = "random",
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if pool == "cls" and not cls_token:
            raise ValueError("pool='cls' needs cls_token=True; use pool='mean'")
        if attention not in ("joint", "factorized", "frame") or pos_embed not in ("learned", "sincos"):
            raise ValueError(f"unknown attention={attention!r} or pos_embed={pos_embed!r}")
        if attention != "joint" and drop_ratio > 0 and drop_mode == "random":
            raise ValueError(
                f"{attention} attention needs the same kept tokens per frame: use drop_mode='tube' or 'per_frame'"
            )
        self.image_size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.patch_size = patch_size
        self.grid_size = (self.image_size[0] // patch_size, self.image_size[1] // patch_size)
        self.width, self.output_dim, self.num_frames = width, output_dim, num_frames
        self.num_prefix_tokens = int(cls_token)
        self.pos_embed_type, self.pool, self.attention = pos_embed, pool, attention
        self.final_ln_after_pool = final_ln_after_pool
        self.cls_key_bias = cls_key_bias and cls_token and attention == "joint"
        self.drop_ratio, self.drop_mode = drop_ratio, drop_mode
        self.grad_checkpointing = False

        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width**-0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width)) if cls_token else None
        if pos_embed == "learned":
            num_pos = self.grid_size[0] * self.grid_size[1] + self.num_prefix_tokens
            self.positional_embedding = nn.Parameter(scale * torch.randn(num_pos, width))
            self.temporal_embedding = nn.Parameter(torch.zeros(num_frames, width))
        self.ln_pre = nn.LayerNorm(width, eps=norm_eps) if ln_pre else nn.Identity()
        rates = torch.linspace(0, drop_path_rate, layers).tolist()
        act_layer = QuickGELU if quick_gelu else nn.GELU
        factorized = attention == "factorized"
        blocks = [
            Block(width, heads, mlp_ratio, ls_init_value, act_layer, norm_eps, rate, factorized) for rate in rates
        ]
        self.transformer = Transformer(blocks)
        self.ln_post = nn.LayerNorm(width, eps=norm_eps)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim)) if output_dim else None
        self.apply(_init_weights)
        self.init_temporal_from_spatial()

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.resblocks

    def init_temporal_from_spatial(self) -> None:
        """Initialise factorised temporal attention from the spatial one (after loading image weights)."""
        for block in self.blocks:
            block.init_temporal_from_spatial()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        names = ("positional_embedding", "class_embedding", "temporal_embedding")
        return {name for name in names if getattr(self, name, None) is not None}

    # ---------------------------------------------------------------- embedding and dropping
    def _position_embeddings(self, num_frames: int, grid: tuple[int, int], ref: torch.Tensor):
        """(cls [P, D], spatial [H*W, D], temporal [T, D]) for this clip's frame count and grid."""
        if self.pos_embed_type == "sincos":
            spatial, temporal = sincos_3d(num_frames, grid, self.width)
            cls = spatial.new_zeros(self.num_prefix_tokens, self.width)
            return cls.to(ref), spatial.to(ref), temporal.to(ref)
        pos = resample_abs_pos_embed(
            self.positional_embedding[None], list(grid), list(self.grid_size), self.num_prefix_tokens
        )[0]
        temporal = resample_temporal_embedding(self.temporal_embedding, num_frames)
        prefix = self.num_prefix_tokens
        return pos[:prefix].to(ref), pos[prefix:].to(ref), temporal.to(ref)

    def embed(self, video: torch.Tensor, keep: torch.Tensor | None = None, sample: bool = True) -> torch.Tensor:
        """Tokens entering the first block: [B, P + N_keep, D] (P = 1 with a CLS token).

        With `sample`, a training-mode model with `drop_ratio` > 0 draws `keep` itself when none is given.
        Only the kept patches are embedded: dropped ones cost no patch-embedding work either.
        """
        batch, frames = video.shape[:2]
        grid = (video.shape[-2] // self.patch_size, video.shape[-1] // self.patch_size)
        patches = grid[0] * grid[1]
        if keep is None and sample and self.training and self.drop_ratio > 0:
            keep = sample_keep_indices(self.drop_mode, batch, frames, patches, self.drop_ratio, device=video.device)
        if keep is None:
            x = self.conv1(video.flatten(0, 1))
            x = x.flatten(2).transpose(1, 2).reshape(batch, frames * patches, self.width)
        else:
            if self.attention != "joint":
                per_frame_count(keep, frames, patches)
            x = self._embed_patches(video, keep, grid)
        cls_pos, spatial, temporal = self._position_embeddings(frames, grid, x)
        pos = (spatial[None] + temporal[:, None]).flatten(0, 1)  # [T * H * W, D] in token order
        x = x + (pos if keep is None else pos[keep])
        if self.class_embedding is not None:
            cls = (self.class_embedding.to(x) + cls_pos).expand(batch, -1, -1)
            x = torch.cat([cls, x], 1)
        return self.ln_pre(x)

    def _embed_patches(self, video: torch.Tensor, keep: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """`conv1` applied to the kept patches only, as one matmul: [B, K, D] for `keep` [B, K].

        The stride-p convolution is a linear map of each p x p patch; gathering the kept patches first saves
        the dropped share of its forward and weight gradient (80% at UMT's masking)."""
        batch, frames, channels = video.shape[:3]
        p = self.patch_size
        pixels = video[..., : grid[0] * p, : grid[1] * p]
        pixels = pixels.reshape(batch, frames, channels, grid[0], p, grid[1], p).permute(0, 1, 3, 5, 2, 4, 6)
        pixels = gather_tokens(pixels.reshape(batch, frames * grid[0] * grid[1], channels * p * p), keep)
        return F.linear(pixels, self.conv1.weight.flatten(1), self.conv1.bias)

    # ---------------------------------------------------------------- transformer
    def _patches(self, video: torch.Tensor) -> int:
        return (video.shape[-2] // self.patch_size) * (video.shape[-1] // self.patch_size)

    def _to_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """[B, P + T*K, D] -> [B*T, P + K, D], the CLS token copied into every frame (frame-wise mode)."""
        prefix = self.num_prefix_tokens
        patches = x[:, prefix:].reshape(x.shape[0] * frames, -1, x.shape[-1])
        return torch.cat([x[:, :prefix].repeat_interleave(frames, 0), patches], 1)

    def _from_frames(self, x: torch.Tensor, frames: int) -> torch.Tensor:
        """Inverse of `_to_frames`; the per-frame CLS tokens are averaged (temporal pooling)."""
        prefix, dim, batch = self.num_prefix_tokens, x.shape[-1], x.shape[0] // frames
        cls = x[:, :prefix].reshape(batch, frames, prefix, dim).mean(1)
        return torch.cat([cls, x[:, prefix:].reshape(batch, -1, dim)], 1)

    def _cls_key_bias(self, x: torch.Tensor, patches_per_frame: int) -> torch.Tensor | None:
        """Additive attention bias log(L / N) on the CLS key, L patch keys, N patches per frame.

        Joint attention over T identical frames sees each patch key T times but the CLS key once, so the
        CLS share of attention shrinks by T and the model differs from the image CLIP it starts from. The
        bias makes the CLS key count as T copies: exact equality with CLIP on static clips at step 0, and the
        same CLS share whatever the drop ratio. Off by default (ViCLIP and CLIP-ViP have no such bias).
        """
        if not self.cls_key_bias:
            return None
        bias = x.new_zeros(1, x.shape[1])
        bias[0, 0] = math.log((x.shape[1] - 1) / patches_per_frame)
        return bias

    def _blocks(
        self,
        x: torch.Tensor,
        frames: int,
        take: list[int] | None = None,
        stop_early: bool = False,
        patches_per_frame: int = 1,
    ):
        """Run the blocks; returns the last tokens and the outputs of the blocks in `take`."""
        frame_wise = self.attention == "frame"
        if frame_wise:
            x = self._to_frames(x, frames)
        block_frames = 1 if frame_wise else frames
        bias = self._cls_key_bias(x, patches_per_frame)
        intermediates = []
        last = max(take) if (take and stop_early) else len(self.blocks) - 1
        for i, block in enumerate(self.blocks[: last + 1]):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, block_frames, self.num_prefix_tokens, bias, use_reentrant=False)
            else:
                x = block(x, block_frames, self.num_prefix_tokens, bias)
            if take is not None and i in take:
                intermediates.append(self._from_frames(x, frames) if frame_wise else x)
        return (self._from_frames(x, frames) if frame_wise else x), intermediates

    def forward_features(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """[B, T, C, H, W] (+ kept indices [B, K]) -> tokens [B, P + K, D] before `ln_post`."""
        x, _ = self._blocks(self.embed(video, keep), video.shape[1], patches_per_frame=self._patches(video))
        return x

    def forward_intermediates(
        self,
        video: torch.Tensor,
        indices: int | list[int] | None = None,
        keep: torch.Tensor | None = None,
        norm: bool = False,
        stop_early: bool = False,
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Outputs [B, P + K, D] of the blocks chosen by `indices` (timm convention; `norm` applies ln_post).

        Returns (final tokens, intermediates), or the intermediates only.
        """
        take = _take_indices(len(self.blocks), indices)
        x, intermediates = self._blocks(self.embed(video, keep), video.shape[1], take, stop_early, self._patches(video))
        if norm:
            intermediates = [self.ln_post(t) for t in intermediates]
        return intermediates if intermediates_only else (x, intermediates)

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool (CLS or mean of patch tokens) with CLIP's `ln_post`, then project: [B, output_dim]."""
        if not self.final_ln_after_pool:
            tokens = self.ln_post(tokens)
        pooled = tokens[:, 0] if self.pool == "cls" else tokens[:, self.num_prefix_tokens :].mean(1)
        if self.final_ln_after_pool:
            pooled = self.ln_post(pooled)
        if pre_logits or self.proj is None:
            return pooled
        return pooled @ self.proj

    def forward(self, video: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_head(self.forward_features(video, keep))

    @torch.no_grad()
    def last_cls_attention(self, video: torch.Tensor) -> torch.Tensor:
        """Last block's CLS-to-patch attention, averaged over heads, per frame: [B, T, N].

        For frame-wise (teacher) use: with `attention='frame'` every frame attends on its own, as an image
        CLIP run frame by frame does. This is the weight of UMT's attention-guided masking.
        """
        if self.class_embedding is None:
            raise ValueError("CLS attention needs a model with a CLS token")
        frames = video.shape[1]
        x = self.embed(video, sample=False)
        if self.attention == "frame":
            x = self._to_frames(x, frames)
        bias = self._cls_key_bias(x, self._patches(video))
        for block in self.blocks[:-1]:
            x = block(x, 1 if self.attention == "frame" else frames, self.num_prefix_tokens, bias)
        last = self.blocks[-1]
        attention = last.attn.first_token_attention(last.ln_1(x), bias)
        return attention.reshape(video.shape[0], frames, -1)

    @classmethod
    def from_open_clip(cls, visual: nn.Module, **overrides) -> VideoViT:
        """Build from an open_clip `VisionTransformer` (e.g. `clip.visual`) and copy its weights."""
        from .pretrained import video_vit_kwargs_from_open_clip

        kwargs = video_vit_kwargs_from_open_clip(visual) | overrides
        model = cls(**kwargs)
        state = {k: v for k, v in visual.state_dict().items() if k in model.state_dict()}
        if "positional_embedding" in state:
            # open_clip always has a CLS row; a CLS-free student keeps the patch rows only
            pos = state["positional_embedding"][1 - model.num_prefix_tokens :]
            old_grid, new_grid = list(visual.grid_size), list(model.grid_size)
            state["positional_embedding"] = resample_abs_pos_embed(
                pos[None], new_grid, old_grid, model.num_prefix_tokens
            )[0]
        missing = model.load_state_dict(state, strict=False).missing_keys
        unexpected_missing = [k for k in missing if "temporal" not in k]
        if unexpected_missing:
            raise RuntimeError(f"open_clip tower lacks weights for {unexpected_missing}")
        model.init_temporal_from_spatial()
        return model


def resample_temporal_embedding(temporal: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Linear interpolation of a temporal embedding [T, D] to [num_frames, D] (the same table at any T).

    Used at every forward for clips of another length, and to carry a checkpoint's table to a model that
    stores another number of frames (e.g. a 16-frame model initialising a 128-frame one).
    """
    if num_frames == temporal.shape[0]:
        return temporal
    return F.interpolate(temporal.T[None], size=num_frames, mode="linear", align_corners=False)[0].T


def _init_weights(module: nn.Module) -> None:
    """timm ViT init for training from scratch; replaced wholesale when CLIP weights are loaded."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
