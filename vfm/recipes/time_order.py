"""Teaching the order of events: clips played backwards as hard negatives, shared by the video-text recipes.

Contrastive video-text training barely learns the direction of time: in-batch negatives almost never differ
from a positive only in the order of its frames. These helpers append part of a batch played backwards with
its time-reversed caption (each is then a negative of its original), give a reversed copy exactly its
original's kept tokens (so the pair differs in frame order and nothing else), and add the direct InfoNCE terms
over a positive and its own order-changed twin. None of this is in the papers; every recipe leaves it off by
default.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vfm.losses import hard_negative_loss
from vfm.models import VideoViT, sample_keep_indices


@dataclass
class ReversedBatch:
    """A batch with its first ``count`` clips appended played backwards (rows ``size`` to ``size + count``)."""

    video: torch.Tensor
    text: torch.Tensor
    text_mask: torch.Tensor | None
    captions: list[str]
    size: int  # clips of the original batch

    @property
    def count(self) -> int:
        return self.video.shape[0] - self.size


def append_reversed_clips(batch: dict, fraction: float) -> ReversedBatch:
    """The first ``fraction`` of the batch appended played backwards, paired with its time-reversed caption
    (needs ``reverse_text``; without it the batch is returned as it is)."""
    video, text, captions = batch["video"], batch["text"], batch["caption"]
    text_mask = batch.get("text_mask")
    size = video.shape[0]
    count = round(fraction * size)
    if count == 0 or "reverse_text" not in batch:
        return ReversedBatch(video, text, text_mask, list(captions), size)
    video = torch.cat([video, video[:count].flip(1)])
    text = torch.cat([text, batch["reverse_text"][:count]])
    if text_mask is not None:
        reverse_mask = batch.get("reverse_text_mask", batch["reverse_text"] != 0)
        text_mask = torch.cat([text_mask, reverse_mask[:count].to(text_mask.dtype)])
    # a reversed clip's caption is its own, even if the same text appears elsewhere in the batch
    return ReversedBatch(video, text, text_mask, [*captions, *(f"\x00reversed\x00{c}" for c in captions[:count])], size)


def mirror_keep_indices(keep: torch.Tensor, frames: int, patches_per_frame: int) -> torch.Tensor:
    """Kept-token indices [B, K] of clips played backwards: the token of frame t moves to frame T - 1 - t."""
    frame, position = keep // patches_per_frame, keep % patches_per_frame
    return ((frames - 1 - frame) * patches_per_frame + position).sort(dim=1).values


def paired_keep_indices(video_tower: VideoViT, video: torch.Tensor, size: int) -> torch.Tensor | None:
    """Kept tokens for a `ReversedBatch`'s clips: fresh draws for the first ``size``, the mirrored draw of its
    original for each reversed copy (independent masks would differ far more than the order does). None when
    the tower drops nothing or nothing was reversed (the tower then draws its own masks)."""
    if not video_tower.training or video_tower.drop_ratio <= 0 or video.shape[0] == size:
        return None
    frames = video.shape[1]
    patches = (video.shape[-2] // video_tower.patch_size) * (video.shape[-1] // video_tower.patch_size)
    keep = sample_keep_indices(
        video_tower.drop_mode, size, frames, patches, video_tower.drop_ratio, device=video.device
    )
    return torch.cat([keep, mirror_keep_indices(keep[: video.shape[0] - size], frames, patches)])


def hard_negative_text(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """Token ids and mask of each clip's hard negative caption: events swapped, else time-reversed, else None."""
    for key in ("swapped_text", "reverse_text"):
        if key in batch:
            return batch[key], batch.get(f"{key}_mask")
    return None


def time_order_loss(
    size: int,
    video_embedding: torch.Tensor,
    text_embedding: torch.Tensor,
    logit_scale: torch.Tensor,
    negative_text_embedding: torch.Tensor | None = None,
) -> torch.Tensor | None:
    """Mean of the InfoNCE terms over a positive and its order-changed twin only:

    - each clip over its caption and its hard negative caption (``negative_text_embedding`` [size, D]);
    - each reversed clip's original caption over the clip and the clip played backwards (rows ``size`` on of
      ``video_embedding``, as `append_reversed_clips` lays them out).
    """
    terms = []
    if negative_text_embedding is not None:
        terms.append(
            hard_negative_loss(video_embedding[:size], text_embedding[:size], negative_text_embedding, logit_scale)
        )
    count = video_embedding.shape[0] - size
    if count > 0:
        terms.append(
            hard_negative_loss(text_embedding[:count], video_embedding[:count], video_embedding[size:], logit_scale)
        )
    return torch.stack(terms).mean() if terms else None
