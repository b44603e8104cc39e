"""UMT stage 2: BERT fusion tower, VTM hard negatives and re-ranking, interleaved image/video batches, recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import clip_sample, tiny_run_args, write_shards

from data_prep.wordpiece import train_wordpiece
from vfm.cli import main
from vfm.data.datamodule import VideoTextDataModule
from vfm.eval.rerank import rerank_top_k
from vfm.losses.matching import sample_hard_negatives
from vfm.models.bert import build_bert_fusion
from vfm.recipes.umt import UnmaskedTeacher
from vfm.recipes.umt_multimodal import UnmaskedTeacherMultimodal

CONFIGS = Path(__file__).parents[1] / "configs"
TINY_BERT = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
STUDENT = {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "heads": 2, "num_frames": 4}
CAPTIONS = [
    "a red circle moves to the left",
    "a blue square grows, then a green star vanishes",
    "a picture of a yellow triangle",
    "an orange star turns clockwise",
]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    return train_wordpiece(
        CAPTIONS * 4 + [f"clip number {i}" for i in range(200)], tmp_path_factory.mktemp("wordpiece"), vocab_size=128
    )


def tiny_recipe(**overrides) -> UnmaskedTeacherMultimodal:
    kwargs = dict(
        student=STUDENT,
        text_model=TINY_BERT,
        fusion_layer=2,
        embed_dim=16,
        mask_mode="per_frame",
        drop_path_rate=0.0,
        rerank_k=4,
    )
    return UnmaskedTeacherMultimodal(**(kwargs | overrides))


def test_wordpiece_vocabulary_has_the_exact_size_and_bert_specials(tokenizer_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True)
    assert len(tokenizer) == 128
    ids = tokenizer("a red circle moves to the left")["input_ids"]
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids
    assert (tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 4)


def test_wordpiece_training_is_deterministic_and_spells_out_unseen_words(tmp_path):
    import json

    from transformers import AutoTokenizer

    vocabularies = []
    for run in range(3):  # HF's trainer alone orders ties by hash: its ids and pieces differed between runs
        folder = train_wordpiece(CAPTIONS * 4, tmp_path / str(run), vocab_size=512)
        vocabularies.append(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"])
    assert vocabularies[1] == vocabularies[0] and vocabularies[2] == vocabularies[0]
    tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "0"), local_files_only=True)
    assert tokenizer.tokenize("a red circle moves") == ["a", "red", "circle", "moves"]  # every corpus word whole
    assert tokenizer.unk_token not in tokenizer.tokenize("a green cat")  # unseen, spelt from the corpus's letters


def test_bert_fusion_text_layers_ignore_video_and_fusion_layers_read_it():
    torch.manual_seed(0)
    bert = build_bert_fusion(TINY_BERT, fusion_layer=2, video_width=48).eval()
    assert not hasattr(bert.bert.encoder.layer[1], "crossattention")
    assert bert.bert.encoder.layer[2].crossattention.self.key.in_features == 48
    assert bert.cls.predictions.decoder.weight is bert.bert.embeddings.word_embeddings.weight
    text = torch.randint(5, 128, (2, 8))
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    features = bert.encode(text, mask)
    # padding is invisible: the padded caption encodes as its unpadded prefix
    torch.testing.assert_close(features[1, :5], bert.encode(text[1:, :5], mask[1:, :5])[0], atol=1e-5, rtol=0)
    video_a, video_b = torch.randn(2, 6, 48), torch.randn(2, 6, 48)
    assert not torch.allclose(bert.fuse(features, mask, video_a), bert.fuse(features, mask, video_b))


def test_hard_negatives_never_share_the_caption_and_follow_the_similarity():
    similarity = torch.tensor([[0.0, 4.0, 1.0, 0.0]]).expand(20000, 4)
    row_ids = torch.zeros(20000, dtype=torch.long)
    column_ids = torch.tensor([0, 1, 2, 0])  # columns 0 and 3 share the row's caption
    picks = sample_hard_negatives(similarity, row_ids, column_ids, torch.Generator().manual_seed(0))
    counts = torch.bincount(picks, minlength=4).float() / len(picks)
    assert counts[0] == 0 and counts[3] == 0
    expected = torch.tensor([4.0, 1.0]).softmax(0)
    torch.testing.assert_close(counts[1:3], expected, atol=0.02, rtol=0)


def test_rerank_scores_only_the_top_k_and_keeps_them_above_the_rest():
    similarity = torch.tensor([[0.9, 0.8, 0.7, 0.1], [0.2, 0.3, 0.9, 0.8]])
    scored = []

    def score(query, item):
        scored.extend(zip(query.tolist(), item.tolist()))
        return -(item.float())  # prefers low item indices

    reranked = rerank_top_k(similarity, 2, score)
    assert sorted(scored) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    assert reranked[0].argsort(descending=True).tolist() == [0, 1, 2, 3]
    assert reranked[1].argsort(descending=True).tolist() == [2, 3, 1, 0]


def batch(frames: int = 4, size: int = 4) -> dict:
    captions = CAPTIONS[:size]
    return {
        "video": torch.randn(size, frames, 3, 32, 32),
        "text": torch.randint(5, 128, (size, 10)),
        "text_mask": torch.ones(size, 10, dtype=torch.bool),
        "caption": captions,
    }


def test_training_step_trains_every_part_on_video_and_image_batches():
    torch.manual_seed(0)
    model = tiny_recipe()
    model.special_ids = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
    for frames in (4, 1):  # a video batch, then an image batch (1-frame clips, masked at 0.5)
        model.zero_grad()
        keep, _ = model._keep(torch.zeros(2, frames, 3, 32, 32))
        assert keep.shape[1] == frames * (8 if frames == 1 else 3)  # of 16 patches: 50% / 80% hidden
        loss = model.training_step(batch(frames), 0)
        loss.backward()
        for name in (
            "video.conv1.weight",
            "text.bert.embeddings.word_embeddings.weight",
            "text.bert.encoder.layer.2.crossattention.self.key.weight",
            "itm_head.weight",
            "vision_proj.weight",
            "text_proj.weight",
            "vtc.logit_scale.log_scale",
        ):
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and grad.abs().sum() > 0, (frames, name)


def test_stage_two_with_teacher_aligns_and_loads_the_stage_one_student(tmp_path):
    from vfm.models import create_clip

    torch.manual_seed(0)
    with pytest.warns(UserWarning):
        clip = create_clip("vit-tiny-test")
    teacher = tmp_path / "teacher.pt"
    torch.save(clip.state_dict(), teacher)
    stage1 = UnmaskedTeacher(
        student=STUDENT, teacher=str(teacher), teacher_model="vit-tiny-test", align_layers=2, teacher_autocast=False
    )
    checkpoint = tmp_path / "stage1.ckpt"
    torch.save(
        {
            "state_dict": stage1.state_dict(),
            "hyper_parameters": dict(stage1.hparams),
            "video_config": stage1.video_config,
        },
        checkpoint,
    )
    model = tiny_recipe(
        init_from=str(checkpoint),
        teacher=str(teacher),
        teacher_model="vit-tiny-test",
        align_layers=2,
        teacher_autocast=False,
        mask_mode="attention",
    )
    model.load_init(str(checkpoint))
    for name, value in stage1.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value, msg=name)
    model.special_ids = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
    losses = {}
    model.log_dict = lambda logs, **_: losses.update(logs)
    model.training_step(batch(), 0)
    assert {"train/vtc", "train/vtm", "train/mlm", "train/uta"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values())


def test_interleaved_image_and_video_batches(tmp_path, tokenizer_dir):
    import io

    from conftest import numbered_frames
    from PIL import Image

    videos = write_shards(tmp_path / "clips", [clip_sample(i) for i in range(8)], 4, "train")
    images = []
    for i in range(8):
        buffer = io.BytesIO()
        Image.fromarray(numbered_frames(1, seed=i)[0]).save(buffer, format="JPEG")
        images.append(
            {"__key__": f"img{i}", "jpg": buffer.getvalue(), "json": json.dumps({"caption": f"a picture {i}"}).encode()}
        )
    image_shards = write_shards(tmp_path / "images", images, 4, "train")
    data = VideoTextDataModule(
        train_shards=videos,
        image_shards=image_shards,
        val_shards=None,
        batch_size=2,
        image_batch_size=4,
        num_workers=0,
        num_frames=4,
        image_size=32,
        samples_per_epoch=8,
        tokenizer=str(tokenizer_dir),
        context_length=16,
    )
    stream = data.train_dataset()
    shapes = [tuple(b["video"].shape[:2]) for b in stream]
    assert len(stream) == 8 and shapes == [(4, 1), (2, 4)] * 4


@pytest.fixture(scope="module")
def multimodal_shards(tmp_path_factory):
    directory = tmp_path_factory.mktemp("mm_shards")
    captions = ["a red circle moves to the left", "a blue square grows"]
    train = [clip_sample(i, caption=f"{captions[i % 2]} {i}", reverse_caption=f"reversed {i}") for i in range(16)]
    write_shards(directory, train, 8, "train")
    val = [clip_sample(100 + i, caption=f"clip number {i}", reverse_caption=f"reversed {i}") for i in range(8)]
    write_shards(directory, val, 4, "val")
    return directory


def test_fit_then_test_reports_reranked_retrieval(multimodal_shards, tokenizer_dir, tmp_path):
    common = [
        "--config",
        str(CONFIGS / "umt_multimodal.yaml"),
        "--model.student",
        json.dumps(STUDENT),
        "--model.text_model",
        json.dumps(TINY_BERT),
        "--model.fusion_layer",
        "2",
        "--model.embed_dim",
        "16",
        "--model.rerank_k",
        "4",
        "--data.train_shards",
        str(multimodal_shards / "train-*.tar"),
        "--data.image_shards",
        "null",
        "--data.val_shards",
        str(multimodal_shards / "val-*.tar"),
        "--data.tokenizer",
        str(tokenizer_dir),
        *tiny_run_args(context_length=16, root=tmp_path),
    ]
    fit = main(["fit", *common, "--trainer.max_epochs", "1"])
    checkpoint = fit.trainer.checkpoint_callback.last_model_path
    tested = main(["test", *common, f"--ckpt_path={checkpoint}"])
    metrics = tested.trainer.callback_metrics
    for key in ("test/t2v_r1", "test/t2v_r1_reranked", "test/v2t_r1_reranked", "test/temporal_acc"):
        assert 0 <= float(metrics[key]) <= 1, key


def test_matching_head_learns_to_tell_pairs_from_hard_negatives():
    """VTM through the fusion layers leaves its 1-in-3 prior (loss 0.636) on a batch it can memorise.

    It sits on that prior while VTC is learned (about 100 steps here, the whole demo there) and then falls:
    a constant head or fusion that ignores the video would stay at 0.636."""
    torch.manual_seed(0)
    model = tiny_recipe(mlm_weight=0.0, video_mask_ratio=0.0)
    model.special_ids = {"pad": 0, "cls": 2, "sep": 3, "mask": 4}
    logs: list[float] = []
    model.log_dict = lambda values, **kwargs: logs.append(float(values["train/vtm"]))
    text = torch.randint(5, 128, (8, 10))
    text[:, 0], text[:, -1] = 2, 3
    fixed = {"video": torch.randn(8, 4, 3, 32, 32), "text": text, "text_mask": torch.ones_like(text, dtype=torch.bool),
             "caption": [f"clip {i}" for i in range(8)]}  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(200):
        loss = model.training_step(fixed, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert sum(logs[:10]) / 10 > 0.6
    assert sum(logs[-20:]) / 20 < 0.45
