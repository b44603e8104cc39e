"""Model parts shared by the recipes (plain nn.Modules and pure functions; no Lightning here)."""

from .factory import create_clip, create_towers, create_video_vit, get_tokenizer, list_models
from .fusion import CrossModalFusion, MLMHead
from .masking import (
    gather_tokens,
    num_kept,
    per_frame_keep_indices,
    random_keep_indices,
    sample_keep_indices,
    tube_keep_indices,
    weighted_keep_indices,
)
from .pretrained import LoadReport, load_open_clip_checkpoint, load_weights, read_state_dict
from .text import MASK_TOKEN_ID, TextEncoder, TextFeatures, mask_text_tokens
from .video_vit import VideoViT

__all__ = [
    "MASK_TOKEN_ID",
    "CrossModalFusion",
    "LoadReport",
    "MLMHead",
    "TextEncoder",
    "TextFeatures",
    "VideoViT",
    "create_clip",
    "create_towers",
    "create_video_vit",
    "gather_tokens",
    "get_tokenizer",
    "list_models",
    "load_open_clip_checkpoint",
    "load_weights",
    "mask_text_tokens",
    "num_kept",
    "per_frame_keep_indices",
    "random_keep_indices",
    "read_state_dict",
    "sample_keep_indices",
    "tube_keep_indices",
    "weighted_keep_indices",
]
