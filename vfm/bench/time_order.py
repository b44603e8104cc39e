"""Which levers let post-pretraining learn the direction of time at demo scale (docs/BENCHMARKS.md).

A screening loop, not the recipe's training path: the embedded corpus's training clips are decoded once
(``middle`` sampling, 8 x 64 px, cached under outputs/bench/), and ``PostPretrain.training_step`` runs in a plain
loop with AdamW and the recipe's warmup-cosine schedule, one thread, so several settings can run side by side.
Every 100 steps it reports the time-order accuracies and t2v R@1 on the 256 held-out clips.

    python -m vfm.bench.time_order NAME STEPS '{"lr": 5e-4, "drop_ratio": 0.0, "time_order_warmup": 0.3}'
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vfm.data.datamodule import VideoTextDataModule
from vfm.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, normalize
from vfm.eval.retrieval import caption_positives, retrieval_metrics
from vfm.eval.temporal import temporal_accuracy
from vfm.recipes.optim import build_adamw, warmup_cosine
from vfm.recipes.post_pretrain import PostPretrain

OUT = Path("outputs/bench/time_order")
KEYS = ("video", "text", "text_mask", "reverse_text", "reverse_text_mask", "caption")
# the demo overlay's model settings; a screen's JSON overrides them (and lr, batch, warmup, seed)
BASE = dict(model="vit-demo", num_frames=8, drop_ratio=0.5, drop_mode="tube", fusion_heads=4, reverse_negatives=0.5,
            temporal_init_std=0.1, temperature_init=0.07, weight_decay=0.05)  # fmt: skip


def _collect(loader) -> dict:
    parts: dict[str, list] = {}
    for batch in loader:
        for key in KEYS:
            parts.setdefault(key, []).append(batch[key])
    return {k: torch.cat(v) if isinstance(v[0], torch.Tensor) else sum(v, []) for k, v in parts.items()}


def clips(shards: str = "data/shards/synthetic/clips") -> dict:
    cache = OUT / "clips.pt"
    if cache.is_file():
        return torch.load(cache)
    data = VideoTextDataModule(batch_size=64, num_workers=2, num_frames=8, image_size=64, context_length=32)
    result = {split: _collect(data._loader(data.eval_dataset(f"{shards}/{split}-*.tar"))) for split in ("train", "val")}
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(result, cache)
    return result


def _normalize(video: torch.Tensor) -> torch.Tensor:
    return normalize(video, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)


@torch.no_grad()
def evaluate(model: PostPretrain, val: dict, batch_size: int = 64) -> dict[str, float]:
    model.eval()
    parts: dict[str, list] = {"v": [], "rv": [], "t": [], "rt": []}
    for i in range(0, len(val["video"]), batch_size):
        video = _normalize(val["video"][i : i + batch_size])
        parts["v"].append(model.encode_video(video))
        parts["rv"].append(model.encode_video(video.flip(1)))
        parts["t"].append(model.encode_text(val["text"][i : i + batch_size], None))
        parts["rt"].append(model.encode_text(val["reverse_text"][i : i + batch_size], None))
    v, rv, t, rt = (F.normalize(torch.cat(parts[k]).float(), dim=-1) for k in ("v", "rv", "t", "rt"))
    metrics = temporal_accuracy(v, t, rt, rv)
    # the recipe's own retrieval metrics: clips sharing a caption are all correct answers
    retrieval = retrieval_metrics(t @ v.T, caption_positives(val["caption"], val["caption"]))
    metrics |= {key: retrieval[key] for key in ("t2v_r1", "v2t_r1")}
    model.train()
    return metrics


def screen(name: str, steps: int, overrides: dict) -> list[dict]:
    torch.set_num_threads(1)
    overrides = dict(overrides)
    lr, batch_size = overrides.pop("lr", 2e-3), overrides.pop("batch", 32)
    warmup, seed = overrides.pop("warmup", 0.05), overrides.pop("seed", 0)
    torch.manual_seed(seed)
    data = clips()
    model = PostPretrain(**{**BASE, **overrides}).train()
    logs: dict[str, float] = {}
    model.log_dict = lambda values, **kwargs: logs.update({k: float(v) for k, v in values.items()})
    model.training_progress = lambda: step / steps
    optimizer = build_adamw(model, lr, model.hparams.weight_decay, (0.9, 0.98))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps, warmup))
    train, generator = data["train"], torch.Generator().manual_seed(seed)
    start, history = time.perf_counter(), []
    for step in range(steps):
        index = torch.randint(len(train["video"]), (batch_size,), generator=generator)
        batch = {k: v[index] if isinstance(v, torch.Tensor) else [v[i] for i in index] for k, v in train.items()}
        batch["video"] = _normalize(batch["video"])
        loss = model.training_step(batch, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0 or step + 1 == steps:
            row = {"step": step + 1, "seconds": round(time.perf_counter() - start)}
            row |= {k: round(v, 3) for k, v in evaluate(model, data["val"]).items()}
            row |= {k: round(v, 3) for k, v in logs.items() if k in ("train/vtc", "train/hard_negative")}
            history.append(row)
            print(name, row, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{name}.json").write_text(json.dumps({"settings": overrides, "lr": lr, "history": history}, indent=1))
    return history


if __name__ == "__main__":
    screen(sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3]) if len(sys.argv) > 3 else {})
