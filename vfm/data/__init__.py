"""Data: shards, decoding, frame sampling, transforms, tokenisation and the one datamodule."""

from .datamodule import VideoTextDataModule

__all__ = ["VideoTextDataModule"]
