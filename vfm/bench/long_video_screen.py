"""What the long-video recipe learns at demo scale, and what each lever costs (docs/BENCHMARKS.md, session 8).

A screening loop, not the recipe's training path: the long videos are decoded once (128 frames spread over each
whole video, 64 px, as the demo's long stage tests them) into caches under outputs/bench/long_video_screen/, and
``LongVideoContrastive.training_step`` runs in a plain loop with AdamW and the recipe's warmup-cosine schedule, one
thread, so two settings can run side by side on two cores. A 16-frame short stage takes one frame at random from
each sixteenth of the cached 128 (the datamodule's ``rand`` sampling). It reports R@1 within each group of 40
held-out videos (the demo tests 40; chance 0.025) and the two time-order accuracies, at the training frame count
and, with the temporal embedding interpolated, at 128 frames.

    python -m data_prep.synthetic --out data/synthetic_screen --num-train 0 --num-val 0 --num-images 0 \\
        --num-image-val 0 --num-long 1000 --num-long-val 200
    python -m data_prep.make_shards --csv data/synthetic_screen/long.csv --videos data/synthetic_screen/videos \\
        --out data/shards/synthetic_screen/long --samples-per-shard 32
    python -m vfm.bench.long_video_screen NAME '{"init": "outputs/demo/post_pretrain/.../last.ckpt", "steps": 300}'

Settings (JSON): ``init`` (a vfm checkpoint, or a state saved by an earlier screen with ``save``), ``steps``,
``batch``, ``lr``, ``warmup``, ``frames`` (16 for the short stage, 128 for the long one), ``seed``, ``layer_decay``
(block i at lr * decay ** (L - i), as the fine-tuning recipe), ``freeze`` (parameter-name prefixes kept fixed),
``temperature`` (reset after loading), ``eval_every``, ``save`` (a path for the trained state); any other key is a
``LongVideoContrastive`` argument over the defaults below.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vfm.data.datamodule import VideoTextDataModule
from vfm.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from vfm.eval.retrieval import caption_positives, retrieval_metrics
from vfm.eval.temporal import temporal_accuracy
from vfm.models.video_vit import resample_temporal_embedding
from vfm.recipes.layer_decay import build_adamw_layer_decay, vit_layer_id
from vfm.recipes.long_video import LongVideoContrastive
from vfm.recipes.optim import build_adamw, warmup_cosine

OUT = Path("outputs/bench/long_video_screen")
SHARDS = "data/shards/synthetic_screen/long"
FRAMES = 128  # cached per video: the demo long stage's frame count
GROUP = 40  # held-out videos per retrieval group: the demo's test set size
KEYS = ("text", "text_mask", "reverse_text", "reverse_text_mask", "swapped_text", "swapped_text_mask")
# the demo short stage's model settings (configs/demo/long_video.yaml at 75% masking); a screen's JSON overrides them
BASE = dict(model="vit-demo", pool="cls", drop_ratio=0.75, drop_mode="per_frame", eval_drop_ratio=0.75,
            trainable_layers=None, context_length=128, weight_decay=0.05)  # fmt: skip


def long_videos(split: str, shards: str = SHARDS) -> dict:
    """The ``split`` long videos of ``shards``: uint8 video [N, 128, 3, 64, 64], token ids, captions (cached)."""
    cache = OUT / f"{split}.pt"
    if cache.is_file():
        return torch.load(cache, weights_only=False)
    data = VideoTextDataModule(
        batch_size=16, num_workers=2, num_frames=FRAMES, image_size=64, eval_sampling="fps", target_fps=0.5,
        context_length=128,
    )  # fmt: skip
    parts: dict[str, list] = {}
    for batch in data._loader(data.eval_dataset(f"{shards}/{split}-*.tar")):
        for key in ("video", "caption", *KEYS):
            parts.setdefault(key, []).append(batch[key])
    result = {k: torch.cat(v) if isinstance(v[0], torch.Tensor) else sum(v, []) for k, v in parts.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, cache)
    return result  # uint8: the datamodule normalises on the device (on_after_batch_transfer), this loop in _video


def _video(video: torch.Tensor) -> torch.Tensor:
    return normalize(video, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


def spread_frames(frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Indices into the cached 128 frames: one in each of ``frames`` equal parts, at random (``generator``) or at
    each part's middle (None)."""
    bounds = torch.linspace(0, FRAMES, frames + 1).long().tolist()
    if generator is None:
        return torch.tensor([(a + b) // 2 for a, b in zip(bounds[:-1], bounds[1:])])
    return torch.tensor([int(torch.randint(a, b, (1,), generator=generator)) for a, b in zip(bounds[:-1], bounds[1:])])


@torch.no_grad()
def evaluate(model: LongVideoContrastive, val: dict, frames: torch.Tensor, batch_size: int = 20) -> dict:
    """R@1 within each group of 40 (its mean ``r1_40`` and the first group's, the demo's test set, ``r1_first40``)
    and the time-order accuracies: the clip over its event-swapped caption (text) and the caption over the clip
    played backwards (video)."""
    was_training = model.training
    model.eval()
    parts: dict[str, list] = {"v": [], "rv": [], "t": [], "s": []}
    for i in range(0, len(val["video"]), batch_size):
        video = _video(val["video"][i : i + batch_size][:, frames])
        parts["v"].append(model.encode_video(video))
        parts["rv"].append(model.encode_video(video.flip(1)))
        parts["t"].append(model.encode_text(val["text"][i : i + batch_size], val["text_mask"][i : i + batch_size]))
        swapped, mask = val["swapped_text"][i : i + batch_size], val["swapped_text_mask"][i : i + batch_size]
        parts["s"].append(model.encode_text(swapped, mask))
    v, rv, t, s = (F.normalize(torch.cat(parts[k]).float(), dim=-1) for k in ("v", "rv", "t", "s"))
    model.train(was_training)
    recall = []  # the recipe's own retrieval metric within each group: identical captions are all correct answers
    for group in range(0, len(v) - GROUP + 1, GROUP):
        captions = val["caption"][group : group + GROUP]
        similarity = t[group : group + GROUP] @ v[group : group + GROUP].T
        recall.append(retrieval_metrics(similarity, caption_positives(captions, captions))["t2v_r1"])
    order = temporal_accuracy(v, t, reverse_text=s, reversed_video=rv)
    return {
        "r1_40": round(sum(recall) / len(recall), 3),
        "r1_first40": round(recall[0], 3),
        **{key: round(order[key], 3) for key in ("temporal_text_acc", "temporal_video_acc")},
    }


def build(recipe: dict, frames: int, init: str | dict) -> LongVideoContrastive:
    """The recipe (``BASE`` under ``recipe``) at ``frames``, its towers from ``init``: a vfm checkpoint, a state
    saved by an earlier screen, or a state dict (its temporal embedding interpolated to ``frames``)."""
    model = LongVideoContrastive(**{**BASE, **recipe, "num_frames": frames})
    if isinstance(init, str) and Path(init).suffix == ".ckpt":
        model.init_towers(init)
        return model
    state = dict(torch.load(init) if isinstance(init, str) else init)
    state["video.temporal_embedding"] = resample_temporal_embedding(state["video.temporal_embedding"], frames)
    model.load_state_dict(state)
    return model


def screen(name: str, settings: dict) -> dict:
    torch.set_num_threads(1)
    settings = dict(settings)
    loop = {key: settings.pop(key, default) for key, default in LOOP.items()}
    if loop["init"] is None:
        raise SystemExit('give "init": a vfm checkpoint (e.g. the demo\'s post_pretrain last.ckpt) or a saved state')
    torch.manual_seed(loop["seed"])
    model = build(settings, loop["frames"], loop["init"]).train()
    for param_name, param in model.named_parameters():
        if any(param_name.startswith(prefix) for prefix in loop["freeze"]):
            param.requires_grad_(False)
    if loop["temperature"] is not None:
        model.vtc.logit_scale.log_scale.data.fill_(math.log(1 / loop["temperature"]))
    logs: dict[str, float] = {}
    model.log_dict = lambda values, **kwargs: logs.update(
        {k: float(torch.as_tensor(v).detach()) for k, v in values.items()}
    )
    h = model.hparams
    if loop["layer_decay"] is not None:
        layers = len(model.video.blocks)
        optimizer = build_adamw_layer_decay(
            model, loop["lr"], h.weight_decay, h.betas, loop["layer_decay"], layers, lambda n: vit_layer_id(n, layers)
        )
    else:
        optimizer = build_adamw(model, loop["lr"], h.weight_decay, h.betas)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(loop["steps"], loop["warmup"]))
    train, val = long_videos("train"), long_videos("val")
    generator = torch.Generator().manual_seed(loop["seed"])
    order, position, batch_size = torch.randperm(len(train["video"]), generator=generator), 0, loop["batch"]
    start, history = time.perf_counter(), []
    for step in range(loop["steps"]):
        if position + batch_size > len(order):
            order, position = torch.randperm(len(train["video"]), generator=generator), 0
        index = order[position : position + batch_size]
        position += batch_size
        frames = spread_frames(loop["frames"], generator)
        batch = {key: train[key][index] for key in KEYS}
        batch["video"] = _video(train["video"][index][:, frames])
        batch["caption"] = [train["caption"][i] for i in index]
        loss = model.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if loop["eval_every"] and (step + 1) % loop["eval_every"] == 0 and step + 1 < loop["steps"]:
            row = {"step": step + 1, "seconds": round(time.perf_counter() - start)}
            row |= evaluate(model, val, spread_frames(loop["frames"]))
            history.append(row | {k: round(v, 3) for k, v in logs.items()})
            print(name, history[-1], flush=True)
    result = {"name": name, "settings": {**loop, **settings}, "train_seconds": round(time.perf_counter() - start)}
    result["at_training_frames"] = evaluate(model, val, spread_frames(loop["frames"]))
    if loop["frames"] != FRAMES:  # the same weights at 128 frames, the temporal embedding interpolated
        long = build(settings, FRAMES, model.state_dict())
        result["at_128_frames"] = evaluate(long, val, spread_frames(FRAMES))
    result["history"] = history
    if loop["save"]:
        torch.save(model.state_dict(), loop["save"])
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps(result, indent=1))
    print(name, {k: v for k, v in result.items() if k != "history"}, flush=True)
    return result


# the loop's own settings and their defaults: the demo short stage's batch, lr and warmup
# (configs/demo/long_video.yaml), with 300 steps
LOOP = dict(init=None, steps=300, batch=32, lr=5e-4, warmup=0.1, frames=16, seed=0, layer_decay=None, freeze=(),
            temperature=None, eval_every=100, save=None)  # fmt: skip


if __name__ == "__main__":
    screen(sys.argv[1], json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
