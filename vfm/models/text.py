"""Text side: open_clip's CLIP text tower and BERT-style masking of its token ids.

The mask token. CLIP's BPE vocabulary (49408 ids: 49406 = SOT, 49407 = EOT, 0 doubles as padding) has no
[MASK], and every id is a real word piece whose pretrained embedding we do not want to overwrite. So the
mask token is a virtual id, `MASK_TOKEN_ID` = 49408 = vocab size, one past the table: the encoder swaps a
learned `mask_embedding` in at those positions. The embedding table, the checkpoint shapes and the tied MLM
output layer stay exactly CLIP's (the head never predicts the mask id, which is never a label), the masked
ids tensor alone says where the masks are, and an id that cannot be looked up fails loudly if it reaches a
plain CLIP tower. EOT pooling ignores the virtual id (it is larger than EOT, so a plain argmax would not).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from open_clip.transformer import TextTransformer
from torch import nn

PAD_TOKEN_ID = 0
SOT_TOKEN_ID = 49406
EOT_TOKEN_ID = 49407
CLIP_VOCAB_SIZE = 49408
MASK_TOKEN_ID = CLIP_VOCAB_SIZE
IGNORE_INDEX = -100


class TextFeatures(NamedTuple):
    embedding: torch.Tensor  # [B, output_dim], equal to open_clip's `encode_text`
    tokens: torch.Tensor  # [B, L, width], after `ln_final`


class TextEncoder(nn.Module):
    """open_clip's CLIP text transformer (causal), returning the pooled embedding and per-token features.

    Submodule names are open_clip's flat CLIP ones (`token_embedding`, `positional_embedding`,
    `transformer`, `ln_final`, `text_projection`), so an open_clip checkpoint loads into it by name.
    """

    def __init__(
        self,
        token_embedding: nn.Embedding,
        positional_embedding: nn.Parameter,
        transformer: nn.Module,
        ln_final: nn.Module,
        text_projection: nn.Parameter | nn.Linear | None,
        attn_mask: torch.Tensor | None,
        pool_type: str = "argmax",
        eos_id: int = EOT_TOKEN_ID,
    ) -> None:
        super().__init__()
        if pool_type not in ("argmax", "eos", "first", "last"):
            raise ValueError(f"unsupported text pooling {pool_type!r}")
        self.token_embedding = token_embedding
        self.positional_embedding = positional_embedding
        self.transformer = transformer
        self.ln_final = ln_final
        self.text_projection = text_projection
        self.register_buffer("attn_mask", attn_mask, persistent=False)
        self.pool_type, self.eos_id = pool_type, eos_id
        self.vocab_size, self.width = token_embedding.weight.shape
        self.mask_token_id = self.vocab_size
        # start the mask vector at the mean word embedding: in-distribution for the pretrained layers
        self.mask_embedding = nn.Parameter(token_embedding.weight.detach().mean(0).clone())

    @classmethod
    def from_open_clip(cls, clip: nn.Module) -> TextEncoder:
        """Share (not copy) the text tower of an open_clip `CLIP` / `CustomTextCLIP` model."""
        tower = getattr(clip, "text", clip)
        if isinstance(tower, TextTransformer) and (tower.cls_emb is not None or tower.use_pad_mask):
            raise ValueError("CoCa-style text towers (cls_emb / pad mask) are not supported")
        if not hasattr(tower, "token_embedding"):
            raise ValueError(
                f"{type(tower).__name__} is not an open_clip CLIP text transformer (HF towers unsupported)"
            )
        return cls(
            tower.token_embedding,
            tower.positional_embedding,
            tower.transformer,
            tower.ln_final,
            tower.text_projection,
            tower.attn_mask,
            getattr(tower, "pool_type", getattr(clip, "text_pool_type", "argmax")),
            getattr(tower, "eos_id", getattr(clip, "text_eos_id", EOT_TOKEN_ID)),
        )

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding", "mask_embedding"}

    @property
    def context_length(self) -> int:
        return self.positional_embedding.shape[0]

    @torch.no_grad()
    def extend_context(self, context_length: int) -> None:
        """Accept captions of up to `context_length` tokens (long-video captions outgrow CLIP's 77).

        Existing positions keep their embedding, so shorter captions encode exactly as before; new ones start
        as copies of the last (see `extend_positions`) and are learned in training.
        """
        if context_length <= self.context_length:
            return
        self.positional_embedding = nn.Parameter(extend_positions(self.positional_embedding, context_length))
        if self.attn_mask is not None:  # causal: position i attends to positions <= i
            mask = torch.full((context_length, context_length), float("-inf"), device=self.attn_mask.device)
            self.attn_mask = mask.triu_(1).to(self.attn_mask.dtype)

    def trim_padding(
        self, text: torch.Tensor, text_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token ids [B, L] and mask cut to the batch's longest caption (trailing all-padding columns dropped).

        In a causal tower this changes no output at the real positions (a token attends only to those before it,
        and the pooled EOT is inside the kept columns) and saves the padding's compute: demo captions fill about
        a third of the context. A tower without a causal mask, or a call without a mask, is left uncut.
        """
        if self.attn_mask is None or text_mask is None:
            return text, text_mask
        length = int(text_mask.any(0).nonzero().max()) + 1 if text_mask.any() else 1
        return text[:, :length], text_mask[:, :length]

    def embed(self, text: torch.Tensor) -> torch.Tensor:
        """Token + position embeddings [B, L, W]; `MASK_TOKEN_ID` positions get the learned mask vector."""
        is_mask = text == self.mask_token_id
        x = self.token_embedding(text.masked_fill(is_mask, PAD_TOKEN_ID))
        x = torch.where(is_mask[..., None], self.mask_embedding.to(x.dtype), x)
        return x + self.positional_embedding[: text.shape[1]].to(x.dtype)

    def _pool(self, tokens: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(text.shape[0], device=text.device)
        if self.pool_type == "first":
            return tokens[:, 0]
        if self.pool_type == "last":
            return tokens[:, -1]
        ids = text.masked_fill(text == self.mask_token_id, PAD_TOKEN_ID)
        # argmax: EOT is the largest real id, as in open_clip; eos: first position of the eos id
        index = ids.argmax(-1) if self.pool_type == "argmax" else (ids == self.eos_id).int().argmax(-1)
        return tokens[rows, index]

    def forward(self, text: torch.Tensor) -> TextFeatures:
        """Token ids [B, L] (L <= context length) -> (pooled projected embedding, token features)."""
        length = text.shape[1]
        mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        tokens = self.ln_final(self.transformer(self.embed(text), attn_mask=mask))
        pooled = self._pool(tokens, text)
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        elif self.text_projection is not None:
            pooled = pooled @ self.text_projection
        return TextFeatures(pooled, tokens)


def extend_positions(table: torch.Tensor, length: int) -> torch.Tensor:
    """A position table [L, W] grown to [length, W] (or cut to it): rows kept, new rows copies of the last.

    Interpolating the whole table would move every position's embedding; copying the last row keeps the
    trained positions exact and gives new ones a start that the (causal) text tower already reads sensibly.
    """
    if length <= table.shape[0]:
        return table[:length]
    return torch.cat([table, table[-1:].expand(length - table.shape[0], -1)]).clone()


def mask_text_tokens(
    text: torch.Tensor,
    text_mask: torch.Tensor | None = None,
    mask_prob: float = 0.5,
    mask_token_id: int = MASK_TOKEN_ID,
    vocab_size: int = CLIP_VOCAB_SIZE,
    special_ids: tuple[int, ...] = (PAD_TOKEN_ID, SOT_TOKEN_ID, EOT_TOKEN_ID),
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: select `mask_prob` of the maskable tokens; of those 80% -> mask, 10% -> random, 10% kept.

    Maskable = inside `text_mask` (when given: id 0 is both padding and the word piece "!") and not a
    special id. Random replacements are drawn from the ordinary word pieces [1, SOT). Returns
    (masked ids, labels) with labels = the original id where selected, `IGNORE_INDEX` elsewhere.
    Deterministic for a given `generator` (its device is used for the draws).
    """
    if text_mask is None:
        maskable = ~torch.isin(text, torch.tensor(special_ids, device=text.device))
    else:
        # padding is where text_mask is False, so a real "!" (id 0) inside the caption stays maskable
        others = torch.tensor([i for i in special_ids if i != PAD_TOKEN_ID], device=text.device, dtype=text.dtype)
        maskable = text_mask.bool() & ~torch.isin(text, others)
    device = generator.device if generator is not None else text.device
    select_draw = torch.rand(text.shape, generator=generator, device=device).to(text.device)
    action_draw = torch.rand(text.shape, generator=generator, device=device).to(text.device)
    random_ids = torch.randint(1, min(SOT_TOKEN_ID, vocab_size), text.shape, generator=generator, device=device)
    selected = maskable & (select_draw < mask_prob)
    labels = torch.where(selected, text, torch.full_like(text, IGNORE_INDEX))
    masked = torch.where(selected & (action_draw < 0.8), torch.full_like(text, mask_token_id), text)
    to_random = selected & (action_draw >= 0.8) & (action_draw < 0.9)
    masked = torch.where(to_random, random_ids.to(text.device), masked)
    return masked, labels
