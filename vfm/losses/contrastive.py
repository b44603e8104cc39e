"""Video-text contrastive loss (VTC): symmetric InfoNCE over the global batch, learnable temperature.

Under DDP every rank gathers the normalised embeddings of all ranks (gradients flow back through the
gather) and computes the same global loss. The gather's backward sums the gradients that all ranks' copies
of the loss send to a rank's own samples, so a rank's local feature gradient is `world_size` times the
single-process one; DDP then averages parameter gradients over ranks, which gives exactly the
single-process gradient of the whole batch.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn


class LogitScale(nn.Module):
    """Learnable inverse temperature, stored as a log, clamped to [min_scale, max_scale].

    The clamp is applied to the parameter in place (as open_clip, ViCLIP and UMT do) rather than in the
    graph: a graph clamp would zero the gradient outside the range and the value could never come back.
    """

    def __init__(self, init_scale: float = 100.0, max_scale: float = 100.0, min_scale: float = 1.0) -> None:
        super().__init__()
        # shape [1], not a 0-d tensor: FSDP cannot shard 0-d parameters (0-d values in state dicts still load)
        self.log_scale = nn.Parameter(torch.tensor([math.log(init_scale)]))
        self.log_min, self.log_max = math.log(min_scale), math.log(max_scale)

    def forward(self) -> torch.Tensor:
        # on `.data`: under FSDP the parameter is a view into a flat buffer, which autograd forbids to modify
        self.log_scale.data.clamp_(self.log_min, self.log_max)
        return self.log_scale.exp().squeeze(0)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args, **kwargs) -> None:
        key = prefix + "log_scale"
        if key in state_dict and state_dict[key].numel() == 1:
            state_dict[key] = state_dict[key].reshape(self.log_scale.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the gradient summed over ranks."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, 0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # every rank computed the loss on the gathered tensor: this rank's samples receive all their grads
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size(), 0)[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` [b, ...] from all ranks along dim 0 (b equal on all ranks), keeping gradients."""
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from all ranks along dim 0 (ids, labels: nothing to differentiate)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, 0)


def contrastive_targets(sample_ids: torch.Tensor) -> torch.Tensor:
    """Soft targets [N, N]: uniform over the samples sharing an id (the same caption), 1 on the diagonal."""
    positives = (sample_ids[:, None] == sample_ids[None, :]).float()
    return positives / positives.sum(1, keepdim=True)


def video_text_contrastive_loss(
    video_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    logit_scale: torch.Tensor,
    sample_ids: torch.Tensor | None = None,
    gather: bool = True,
) -> torch.Tensor:
    """Symmetric InfoNCE between L2-normalised video and text embeddings [b, E] of the global batch.

    `sample_ids` [b] (e.g. a caption hash): clips with equal ids are all positives of each other.
    `gather=False` keeps the loss local to this rank's batch.
    """
    # similarities of unit vectors at a scale of 100 need fp32: opt out of any surrounding autocast
    with torch.autocast(video_embedding.device.type, enabled=False):
        video = F.normalize(video_embedding.float(), dim=-1)
        text = F.normalize(text_embedding.float(), dim=-1)
        if gather:
            video, text = gather_with_grad(video), gather_with_grad(text)
            sample_ids = gather_no_grad(sample_ids) if sample_ids is not None else None
        logits = logit_scale.float() * video @ text.T
        if sample_ids is None:
            targets = torch.arange(logits.shape[0], device=logits.device)
        else:
            # the positive relation is symmetric, so the same soft targets serve both directions
            targets = contrastive_targets(sample_ids)
        return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


class VideoTextContrastiveLoss(nn.Module):
    """VTC with its own learnable temperature (1/100 at init, scale clamped to `max_scale`)."""

    def __init__(self, init_scale: float = 100.0, max_scale: float = 100.0, min_scale: float = 1.0) -> None:
        super().__init__()
        self.logit_scale = LogitScale(init_scale, max_scale, min_scale)

    def forward(
        self,
        video_embedding: torch.Tensor,
        text_embedding: torch.Tensor,
        sample_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return video_text_contrastive_loss(video_embedding, text_embedding, self.logit_scale(), sample_ids)
