"""Train a BERT WordPiece vocabulary on the captions of tar shards, offline, into a HuggingFace tokenizer folder.

    python -m data_prep.wordpiece --shards 'data/shards/synthetic/clips/train-*.tar' \
        'data/shards/synthetic/images/train-*.tar' --out data/tokenizers/synthetic-wordpiece --vocab-size 512

UMT's text tower is BERT; its real vocabulary is a download, so tests and the demo train a small one on the
corpus instead (HF `tokenizers`). The vocabulary is filled up to exactly ``--vocab-size`` with BERT's own
``[unused{i}]`` entries, so a model config can name its size before the corpus is seen. Special ids:
[PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4. The folder loads with ``AutoTokenizer.from_pretrained`` and is
what ``data.tokenizer`` of configs/umt_multimodal.yaml names.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast

from vfm.data.shards import expand_urls

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shard_captions(patterns: list[str]) -> Iterator[str]:
    """Every caption (json ``caption``/``name``, or ``txt``) in the shards; media members are not read."""
    for url in expand_urls(patterns):
        with tarfile.open(url) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    caption = meta.get("caption") or meta.get("name")
                    if caption:
                        yield str(caption)
                elif member.name.endswith(".txt"):
                    yield tar.extractfile(member).read().decode("utf-8")


def train_wordpiece(captions: Iterator[str] | list[str], out_dir: str | Path, vocab_size: int = 512) -> Path:
    """A lower-casing BERT WordPiece tokenizer of exactly `vocab_size` entries, saved to `out_dir`."""
    captions = list(captions)
    trained = _bert_pipeline(Tokenizer(models.WordPiece(unk_token="[UNK]")))
    trained.train_from_iterator(
        captions, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    )
    tokenizer = _bert_pipeline(Tokenizer(models.WordPiece(_canonical_vocab(trained, captions), unk_token="[UNK]")))
    missing = vocab_size - tokenizer.get_vocab_size()
    if missing < 0:
        raise RuntimeError(f"trained {tokenizer.get_vocab_size()} entries for vocab_size {vocab_size}")
    tokenizer.add_tokens([f"[unused{i}]" for i in range(missing)])
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    wrapped = BertTokenizerFast(tokenizer_object=tokenizer, do_lower_case=True, **_special_kwargs())
    out = Path(out_dir)
    wrapped.save_pretrained(str(out))
    return out


def _bert_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """BERT's uncased normaliser, pre-tokeniser and WordPiece decoder around ``tokenizer``'s model."""
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece()
    return tokenizer


def _canonical_vocab(trained: Tokenizer, captions: list[str]) -> dict[str, int]:
    """The trained vocabulary reduced to what makes it tokenise: the specials, every single character (alone and as
    ``##`` continuation, for words never seen) and every entry the captions are encoded with; ids in that order,
    each part sorted. HF's trainer breaks ties between equally frequent characters and merges by hash order, so
    two trainings on the same captions differ in their ids and in intermediate pieces that no caption is encoded
    with (the demo's stage-2 figures then changed from one clean run to the next); this does not."""
    vocab = trained.get_vocab()
    characters = {token for token in vocab if len(token.removeprefix("##")) == 1}
    used = {token for encoding in trained.encode_batch(captions) for token in encoding.tokens}
    rest = sorted((characters | used) - set(SPECIAL_TOKENS))
    return {token: i for i, token in enumerate([*SPECIAL_TOKENS, *rest])}


def _special_kwargs() -> dict[str, str]:
    return {
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
    }


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", nargs="+", required=True, help="globs / brace patterns of tar shards")
    parser.add_argument("--out", required=True)
    parser.add_argument("--vocab-size", type=int, default=512)
    args = parser.parse_args(argv)
    out = train_wordpiece(shard_captions(args.shards), args.out, args.vocab_size)
    print(f"wrote a {args.vocab_size}-entry WordPiece tokenizer to {out}")
    return out


if __name__ == "__main__":
    main()
