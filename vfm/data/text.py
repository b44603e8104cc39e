"""Tokenisation: open_clip's bundled BPE tokenizer (offline) or a HuggingFace tokenizer from a local folder."""

from __future__ import annotations

from pathlib import Path

import torch


class CaptionTokenizer:
    """Callable: list of captions -> (token ids [B, L] long, attention mask [B, L] bool).

    ``name`` is an open_clip model name (its bundled tokenizer works offline) or a local folder holding
    a HuggingFace tokenizer (for example a BERT vocabulary for UMT stage 2). Nothing is downloaded.
    """

    def __init__(self, name: str = "ViT-B-16", context_length: int = 77) -> None:
        self.name = name
        self.context_length = context_length
        if Path(name).is_dir():
            from transformers import AutoTokenizer

            self._hf = AutoTokenizer.from_pretrained(name, local_files_only=True)
            self._clip = None
            self.pad_id = self._hf.pad_token_id or 0
        else:
            import open_clip

            self._hf = None
            self._clip = open_clip.get_tokenizer(name, context_length=context_length)
            self.pad_id = 0

    @property
    def vocab_size(self) -> int:
        return len(self._hf) if self._hf is not None else self._clip.vocab_size

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._hf is not None:
            encoded = self._hf(
                captions, padding="max_length", truncation=True, max_length=self.context_length, return_tensors="pt"
            )
            return encoded["input_ids"].long(), encoded["attention_mask"].bool()
        ids = self._clip(captions).long()
        return ids, ids != self.pad_id

    def __getstate__(self) -> dict:
        # Data workers rebuild the tokenizer rather than pickling its caches.
        return {"name": self.name, "context_length": self.context_length}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)
