"""vfm: video foundation models."""

from __future__ import annotations

from typing import Any

__all__ = ["load_encoder"]


def __getattr__(name: str) -> Any:
    # Lazy: `import vfm` stays light (data workers, data_prep); `vfm.load_encoder` pulls in torch + open_clip only.
    if name == "load_encoder":
        from vfm.models.interchange import load_encoder

        return load_encoder
    raise AttributeError(f"module 'vfm' has no attribute {name!r}")
