"""Text tower (equal to open_clip), BERT-style text masking, and the cross-modal fusion with its MLM head."""

from __future__ import annotations

import warnings

import pytest
import torch

from vfm.models import CrossModalFusion, TextEncoder, create_towers, get_tokenizer, mask_text_tokens
from vfm.models.factory import create_clip
from vfm.models.text import EOT_TOKEN_ID, IGNORE_INDEX, MASK_TOKEN_ID, SOT_TOKEN_ID

MODEL = "vit-tiny-test"
CAPTIONS = [
    "a red triangle moves to the left, then a blue circle grows!",
    "a square",
    "two green dots vanish",
]


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return create_clip(MODEL).eval()


@pytest.fixture(scope="module")
def tokens() -> torch.Tensor:
    return get_tokenizer(MODEL)(CAPTIONS)


def test_pooled_embedding_equals_open_clip_encode_text(clip, tokens):
    text = TextEncoder.from_open_clip(clip).eval()
    with torch.no_grad():
        features = text(tokens)
        torch.testing.assert_close(features.embedding, clip.encode_text(tokens), atol=1e-5, rtol=0)
    assert features.tokens.shape == (3, 32, 64)
    assert text.token_embedding is clip.token_embedding  # shared, not copied


def test_trimming_the_padding_changes_no_embedding_or_real_token(clip, tokens):
    text = TextEncoder.from_open_clip(clip).eval()
    mask = tokens != 0
    trimmed, trimmed_mask = text.trim_padding(tokens, mask)
    longest = int(mask.sum(1).max())
    assert trimmed.shape == (3, longest) and trimmed_mask.all(1).any() and trimmed_mask.sum() == mask.sum()
    with torch.no_grad():
        full, cut = text(tokens), text(trimmed)
    torch.testing.assert_close(cut.embedding, full.embedding, atol=1e-5, rtol=0)
    torch.testing.assert_close(cut.tokens, full.tokens[:, :longest], atol=1e-5, rtol=0)


def test_mask_ids_use_the_learned_mask_embedding_and_keep_eot_pooling(clip, tokens):
    text = TextEncoder.from_open_clip(clip).eval()
    masked = tokens.clone()
    masked[:, 1] = MASK_TOKEN_ID
    embedded = text.embed(masked)
    torch.testing.assert_close(embedded[:, 1], text.mask_embedding + text.positional_embedding[1].expand(3, -1))
    torch.testing.assert_close(
        text._pool(torch.arange(32.0)[None, :, None].expand(3, -1, 1), masked)[:, 0],
        (tokens == EOT_TOKEN_ID).float().argmax(1).float(),
    )


def test_text_masking_statistics_and_specials():
    text = torch.randint(1, 40000, (400, 32))
    text[:, 0] = SOT_TOKEN_ID
    text[:, 20] = EOT_TOKEN_ID
    text[:, 21:] = 0
    text[:, 5] = 0  # the word piece "!" inside the caption: maskable because text_mask says it is text
    text_mask = torch.arange(32)[None] <= 20
    masked, labels = mask_text_tokens(text, text_mask, generator=torch.Generator().manual_seed(0))
    selected = labels != IGNORE_INDEX
    assert not selected[:, [0, 20]].any() and not selected[:, 21:].any()
    assert selected[:, 5].float().mean() > 0.4
    torch.testing.assert_close(labels[selected], text[selected])
    torch.testing.assert_close(masked[~selected], text[~selected])
    assert abs(selected[:, 1:20].float().mean().item() - 0.5) < 0.02
    as_mask = (masked[selected] == MASK_TOKEN_ID).float().mean().item()
    kept = (masked[selected] == text[selected]).float().mean().item()
    assert abs(as_mask - 0.8) < 0.02 and abs(kept - 0.1) < 0.02  # the rest (~10%) are random ids
    replaced = masked[selected & (masked != MASK_TOKEN_ID) & (masked != text)]
    assert replaced.min() >= 1 and replaced.max() < SOT_TOKEN_ID


def test_text_masking_is_deterministic_given_a_generator(tokens):
    first = mask_text_tokens(tokens, generator=torch.Generator().manual_seed(3))
    second = mask_text_tokens(tokens, generator=torch.Generator().manual_seed(3))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b)


def test_fusion_mlm_head_is_tied_to_the_token_embedding(tokens):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        video_vit, text = create_towers(MODEL, num_frames=2)
    fusion = CrossModalFusion(text.token_embedding, video_width=video_vit.width, layers=2, heads=4)
    assert fusion.mlm_head.decoder.weight is text.token_embedding.weight

    masked, labels = mask_text_tokens(tokens, tokens != 0, generator=torch.Generator().manual_seed(0))
    video_tokens = video_vit.forward_features(torch.randn(3, 2, 3, 32, 32))
    fused = fusion(text(masked).tokens, video_tokens, text_mask=tokens != 0)
    assert fused.shape == (3, 32, 64)
    logits = fusion.mlm_logits(fused, labels)
    assert logits.shape == ((labels != IGNORE_INDEX).sum(), 49408)
    logits.logsumexp(-1).sum().backward()
    assert text.token_embedding.weight.grad.abs().sum() > 0
    assert video_vit.conv1.weight.grad.abs().sum() > 0  # the text attends to the video
    assert text.mask_embedding.grad.abs().sum() > 0


def test_fusion_ignores_padding_tokens(tokens):
    torch.manual_seed(0)
    embedding = torch.nn.Embedding(49408, 64)
    fusion = CrossModalFusion(embedding, video_width=48, heads=4).eval()
    text_tokens, video_tokens = torch.randn(1, 6, 64), torch.randn(1, 5, 48)
    mask = torch.tensor([[True, True, True, True, False, False]])
    changed = text_tokens.clone()
    changed[:, 4:] += 10.0
    torch.testing.assert_close(
        fusion(text_tokens, video_tokens, mask)[:, :4], fusion(changed, video_tokens, mask)[:, :4]
    )
