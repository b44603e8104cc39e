import collections
import json
import os

import numpy as np
import pytest
import torch
from conftest import clip_sample, write_shards
from torch.utils.data import DataLoader

from vfm.data.datamodule import VideoTextDataModule
from vfm.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD


def make_datamodule(directory, **overrides) -> VideoTextDataModule:
    settings = dict(
        train_shards=str(directory / "train-*.tar"),
        val_shards=str(directory / "train-{000000..000005}.tar"),
        batch_size=4,
        num_workers=0,
        num_frames=4,
        image_size=32,
        samples_per_epoch=40,
        shuffle_buffer=8,
    )
    return VideoTextDataModule(**{**settings, **overrides})


def collect(loader) -> list[dict]:
    return [batch for batch in loader]


def test_training_batches_have_the_documented_keys(clip_shards):
    directory, _ = clip_shards
    dm = make_datamodule(directory, label_key="motion", classes=["left", "right"])
    loader = dm.train_dataloader()
    batch = next(iter(loader))
    assert batch["video"].shape == (4, 4, 3, 32, 32) and batch["video"].dtype == torch.uint8
    assert batch["text"].shape == (4, 77) and batch["text_mask"].dtype == torch.bool
    assert batch["reverse_text"].shape == (4, 77)
    assert batch["label"].tolist() == [int(key) % 2 for key in batch["key"]]
    assert batch["idx"].tolist() == [int(key) for key in batch["key"]]  # shard offsets from stats.json
    assert batch["caption"] == [f"clip number {int(key)}" for key in batch["key"]]
    raw_value = batch["video"][0, 0, 0, 0, 0].float()
    moved = dm.on_after_batch_transfer(batch, 0)
    assert moved["video"].dtype == torch.float32
    expected = (raw_value / 255 - OPENAI_CLIP_MEAN[0]) / OPENAI_CLIP_STD[0]
    assert torch.isclose(moved["video"][0, 0, 0, 0, 0], expected.float(), atol=1e-5)


@pytest.mark.parametrize("num_workers", [0, 2, 3])
@pytest.mark.parametrize("world_size", [1, 2])
def test_epoch_length_is_exact_for_any_workers_and_ranks(clip_shards, num_workers, world_size):
    directory, _ = clip_shards
    dm = make_datamodule(directory, num_workers=num_workers, samples_per_epoch=48)
    dm._distributed = lambda: (world_size - 1, world_size)
    loader = dm.train_dataloader()
    expected = 48 // (4 * world_size)
    assert len(loader) == expected
    assert len(collect(loader)) == expected
    assert len(collect(loader)) == expected  # second epoch, same persistent workers


def test_readers_and_epochs_draw_different_sequences(clip_shards):
    directory, _ = clip_shards
    sequences = {}
    for rank in (0, 1):
        dm = make_datamodule(directory, num_workers=2, samples_per_epoch=64)
        dm._distributed = lambda rank=rank: (rank, 2)
        loader = dm.train_dataloader()
        for epoch in (0, 1):
            sequences[rank, epoch] = [k for batch in loader for k in batch["key"]]
    assert len({tuple(seq) for seq in sequences.values()}) == 4


def test_same_seed_same_stream_and_resume_gives_a_fresh_one(clip_shards):
    directory, _ = clip_shards
    first = [k for b in make_datamodule(directory).train_dataloader() for k in b["key"]]
    again = [k for b in make_datamodule(directory).train_dataloader() for k in b["key"]]
    assert first == again
    resumed = make_datamodule(directory)
    resumed.load_state_dict({"epoch": 0, "samples_seen": 40, "resume_token": 0})
    assert [k for b in resumed.train_dataloader() for k in b["key"]] != first


def test_resampling_visits_samples_about_equally(clip_shards):
    directory, total = clip_shards
    dm = make_datamodule(directory, samples_per_epoch=1200, num_frames=1, image_size=16)
    counts = collections.Counter(k for b in dm.train_dataloader() for k in b["key"])
    assert len(counts) == total
    assert min(counts.values()) > 20 and max(counts.values()) < 90  # 50 expected each


def test_validation_visits_every_sample_once_across_ranks_and_workers(clip_shards):
    directory, total = clip_shards
    seen = []
    for rank in range(2):
        dm = make_datamodule(directory, num_workers=2, eval_batch_size=5)
        dm._distributed = lambda rank=rank: (rank, 2)
        loader = dm.val_dataloader()
        batches = collect(loader)
        assert len(batches) == len(loader)
        seen += [i for b in batches for i in b["idx"].tolist()]
    assert sorted(seen) == list(range(total))


def test_validation_with_uneven_shards_and_three_ranks(tmp_path):
    write_shards(tmp_path, [clip_sample(i, num_frames=4) for i in range(11)], per_shard=5, prefix="val")
    seen = []
    for rank in range(3):
        dm = VideoTextDataModule(
            train_shards=None,
            val_shards=str(tmp_path / "val-*.tar"),
            batch_size=2,
            num_workers=0,
            num_frames=2,
            image_size=16,
        )
        dm._distributed = lambda rank=rank: (rank, 3)
        seen += [i for b in dm.val_dataloader() for i in b["idx"].tolist()]
    assert sorted(seen) == list(range(11))


def test_broken_samples_are_skipped_and_counted(tmp_path):
    samples = [clip_sample(i, num_frames=4) for i in range(6)]
    samples[2]["mp4"] = b"\x00" * 100
    samples[4]["mp4"] = b"this is text, not a video"
    write_shards(tmp_path, samples, per_shard=6, prefix="val")
    dm = VideoTextDataModule(
        val_shards=str(tmp_path / "val-*.tar"), batch_size=3, num_workers=0, num_frames=2, image_size=16
    )
    batches = collect(dm.val_dataloader())
    assert sorted(i for b in batches for i in b["idx"].tolist()) == [0, 1, 3, 5]
    assert sum(int(b["num_failed"]) for b in batches) == 2


def test_images_come_out_as_single_frame_clips(tmp_path):
    from torchvision.io import encode_jpeg

    images = torch.randint(0, 255, (3, 3, 40, 56), dtype=torch.uint8)
    samples = [
        {
            "__key__": f"{i:04d}",
            "jpg": encode_jpeg(img).numpy().tobytes(),
            "json": json.dumps({"caption": f"image {i}"}).encode(),
        }
        for i, img in enumerate(images)
    ]
    write_shards(tmp_path, samples, per_shard=3, prefix="train")
    dm = VideoTextDataModule(
        train_shards=str(tmp_path / "train-*.tar"), batch_size=3, num_workers=0, image_size=32, samples_per_epoch=3
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["video"].shape == (3, 1, 3, 32, 32)


def test_too_few_shards_without_resampling_is_a_clear_error(clip_shards):
    directory, _ = clip_shards
    dm = make_datamodule(directory, num_workers=4, resampled=False)
    dm._distributed = lambda: (0, 2)
    with pytest.raises(ValueError, match="6 training shards cannot feed 2 ranks x 4 workers = 8 readers"):
        dm.train_dataloader()
    dm = make_datamodule(directory, num_workers=3, resampled=False, samples_per_epoch=24)
    dm._distributed = lambda: (0, 2)
    keys = [k for b in dm.train_dataloader() for k in b["key"]]
    assert len(keys) == 12  # this rank's share of the epoch


def test_missing_shards_name_the_pattern(tmp_path):
    dm = VideoTextDataModule(train_shards=str(tmp_path / "nothing-*.tar"))
    with pytest.raises(FileNotFoundError, match="nothing-"):
        dm.train_dataloader()


def test_eval_sampling_is_deterministic(clip_shards):
    directory, _ = clip_shards
    dm = make_datamodule(directory)
    first = torch.cat([b["video"] for b in dm.val_dataloader()])
    second = torch.cat([b["video"] for b in dm.val_dataloader()])
    assert torch.equal(first, second)
    assert isinstance(dm.val_dataloader(), DataLoader)
    assert np.isfinite(first.float().mean().item())


class _Niceness(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield os.nice(0)


def test_worker_nice_lowers_the_data_workers_priority_only():
    import functools

    from vfm.data.datamodule import lower_priority

    own = os.nice(0)
    loader = VideoTextDataModule(num_workers=1, worker_nice=5)._loader(_Niceness())
    assert [int(value) for value in loader] == [min(own + 5, 19)]
    assert os.nice(0) == own  # the training process keeps its priority
    assert VideoTextDataModule(num_workers=0, worker_nice=5)._loader(_Niceness()).worker_init_fn is None
    assert isinstance(loader.worker_init_fn, functools.partial) and loader.worker_init_fn.args == (5,)
    lower_priority(0, worker_id=0)  # 0 changes nothing
    assert os.nice(0) == own
