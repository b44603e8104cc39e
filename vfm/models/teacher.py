"""The frozen teacher of Unmasked Teacher: an image CLIP (or any vfm video tower) run without gradients.

One teacher pass gives both what the student is masked with and what it is aligned to: the last block's
CLS-to-patch attention (averaged over heads, per frame) and the token outputs of the last K blocks. Only
the tokens the student keeps are then put through `ln_post` and `proj` (a fifth of them at 80% masking),
not every token of every returned layer.

The teacher is held outside the module tree (`FrozenTeacher.model` is not a registered submodule): it has no
parameters in `parameters()`, so it is never in an optimizer, never wrapped for gradient sync by DDP, never
in a `state_dict` (checkpoints record its source and sha256 instead), and `.train()` cannot reach it. Device
and dtype moves (`.to`, `.cuda`, `.half`) still apply to it through `_apply`.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .masking import gather_tokens
from .video_vit import VideoViT


class TeacherOutput(NamedTuple):
    cls_attention: torch.Tensor  # [B, T, N] last block's CLS-to-patch attention (heads averaged), fp32
    layers: list[torch.Tensor]  # K x [B, T*N, D] patch tokens of the last K blocks, before ln_post


def file_sha256(path: str | Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class FrozenTeacher(nn.Module):
    """A `VideoViT` with a CLS token kept frozen, in eval mode and out of the module tree.

    Args:
        model: the teacher tower; `attention='frame'` runs an image CLIP frame by frame.
        num_layers: K, how many of its last blocks the student is aligned to.
        autocast: run under bf16 autocast (the targets are compared after L2 normalisation).
        source, sha256: where the weights came from, recorded in the student's checkpoints.
    """

    def __init__(
        self,
        model: VideoViT,
        num_layers: int = 6,
        autocast: bool = True,
        source: str | None = None,
        sha256: str | None = None,
    ) -> None:
        super().__init__()
        if model.class_embedding is None:
            raise ValueError("the teacher needs a CLS token: semantic masking reads its attention")
        if model.attention == "factorized":
            raise ValueError("a factorised teacher is not supported: use attention 'frame' or 'joint'")
        if not 1 <= num_layers <= len(model.blocks):
            raise ValueError(f"num_layers={num_layers} outside [1, {len(model.blocks)}]")
        model.requires_grad_(False)
        model.eval()
        model.drop_ratio = 0.0
        self.__dict__["model"] = model  # deliberately not registered: see the module docstring
        self.num_layers, self.autocast = num_layers, autocast
        self.source, self.sha256 = source, sha256

    # ---- keeping the hidden model on the right device, and frozen ---------------------------------------
    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        self.model._apply(fn)
        return self

    def train(self, mode: bool = True) -> FrozenTeacher:
        super().train(mode)
        self.model.eval()  # whatever Lightning asks
        return self

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(self.model.grid_size)

    @property
    def output_dim(self) -> int:
        return self.model.output_dim or self.model.width

    def describe(self) -> dict[str, str | None]:
        return {"source": self.source, "sha256": self.sha256}

    # ---- forward ---------------------------------------------------------------------------------------
    def resize(self, video: torch.Tensor) -> torch.Tensor:
        """Frames [B, T, C, H, W] resized (bicubic) to the teacher's resolution when theirs differs."""
        if tuple(video.shape[-2:]) == self.image_size:
            return video
        frames = F.interpolate(video.flatten(0, 1), size=self.image_size, mode="bicubic", align_corners=False)
        return frames.unflatten(0, video.shape[:2])

    @torch.no_grad()
    def forward(self, video: torch.Tensor) -> TeacherOutput:
        video = self.resize(video)
        enabled = self.autocast and video.device.type in ("cuda", "cpu")
        with torch.autocast(video.device.type, dtype=torch.bfloat16, enabled=enabled):
            return _layers_and_cls_attention(self.model, video, self.num_layers)

    @torch.no_grad()
    def targets(self, layers: list[torch.Tensor], keep: torch.Tensor) -> torch.Tensor:
        """Aligned-to features [K, B, N_keep, C] of the kept tokens: ln_post, proj, L2 normalisation."""
        model = self.model
        kept = torch.stack([gather_tokens(layer, keep) for layer in layers]).float()
        kept = F.layer_norm(
            kept, kept.shape[-1:], model.ln_post.weight.float(), model.ln_post.bias.float(), model.ln_post.eps
        )
        if model.proj is not None:
            kept = kept @ model.proj.float()
        return F.normalize(kept, dim=-1)


def _layers_and_cls_attention(model: VideoViT, video: torch.Tensor, num_layers: int) -> TeacherOutput:
    """One pass: outputs of the last `num_layers` blocks and the last block's CLS attention."""
    batch, frames = video.shape[:2]
    patches = model._patches(video)
    frame_wise = model.attention == "frame"
    x = model.embed(video, sample=False)
    if frame_wise:
        x = model._to_frames(x, frames)
    bias = model._cls_key_bias(x, patches)
    block_frames = 1 if frame_wise else frames
    first_returned = len(model.blocks) - num_layers
    layers = []
    for index, block in enumerate(model.blocks):
        if index == len(model.blocks) - 1:
            x, attention = _block_with_cls_attention(block, x, bias)
        else:
            x = block(x, block_frames, 1, bias)
        if index >= first_returned:
            # frame-wise: [B*T, 1 + N, D] -> patch tokens [B, T*N, D]; joint: drop the CLS token
            layers.append(x[:, 1:].reshape(batch, frames * patches, -1))
    return TeacherOutput(attention.float().reshape(batch, frames, patches), layers)


def _block_with_cls_attention(block: nn.Module, x: torch.Tensor, bias: torch.Tensor | None):
    """A (non-factorised) block's forward that also returns its CLS query's attention, from the same q, k."""
    attn = block.attn
    q, k, v = attn._qkv(block.ln_1(x))
    if bias is not None:
        bias = bias.to(q.dtype)
    logits = (q[:, :, :1] @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias[..., :1, :]
    cls_attention = logits.float().softmax(-1).mean(1)[:, 0, 1:]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).flatten(2)))
    x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x, cls_attention
