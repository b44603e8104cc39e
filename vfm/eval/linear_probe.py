"""Linear probe on features extracted once (CLIP's protocol): the frozen encoder reads each training clip once,
without augmentation, and a linear classifier is fitted on the stored features.

``python -m vfm.eval.linear_probe --config configs/linear_probe.yaml --model.init_from path/to/last.ckpt``
reads the same configs as the Lightning probe (``fit`` with ``linear_probe: true``, which re-decodes and augments
every clip each epoch) and prints the test metrics as JSON. On the demo's post-pretrained encoder the Lightning
probe spends about 60 s decoding 1920 clips three times (top-1 0.555); this one decodes the 2000 training clips
once and reaches 0.58 in about 22 s (``make demo`` uses it; docs/BENCHMARKS.md).

The classifier: AdamW with a cosine schedule on minibatches of standardised features; its weight decay is chosen
on a fifth of the training clips held out, then it is refitted on all of them. The test clips choose nothing.
Its settings are `ProbeSettings` (``--probe.epochs 100``, ``--probe.lr``, ``--probe.batch_size`` on the command
line), not the recipe's ``model.lr`` / ``trainer.max_epochs``. Features are extracted on the trainer's device in its
precision (``--trainer.accelerator gpu`` works), in one process: under torchrun every rank would repeat the work.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from torchmetrics.functional.classification import multiclass_accuracy

from vfm.recipes.optim import warmup_cosine

# AdamW's decoupled decay: each step shrinks the weights by lr x decay (at lr 1e-2, 10 takes a tenth a step)
WEIGHT_DECAYS = (0.0, 0.01, 0.1, 1.0, 10.0)


@dataclass
class ProbeSettings:
    epochs: int = 30  # on the demo's features 100 gain at most 0.01 top-1 and take 3x as long
    batch_size: int = 256
    lr: float = 1e-2
    weight_decays: tuple[float, ...] = WEIGHT_DECAYS
    holdout: float = 0.2
    seed: int = 0


@torch.no_grad()  # not inference_mode: the features are then ordinary tensors a user may train on
def extract_features(features_fn, loader: DataLoader, prepare=None) -> tuple[torch.Tensor, torch.Tensor]:
    """``features_fn(video) -> [B, D]`` over every batch of ``loader`` (after ``prepare(batch)``, e.g. the
    datamodule's normalisation): (features [N, D] float32, labels [N]). A multi-view batch [B, V, T, C, H, W]
    (``data.test_clips`` x ``data.test_crops``) gives each clip the mean of its views' features."""
    features, labels = [], []
    for batch in loader:
        batch = prepare(batch) if prepare is not None else batch
        video = batch["video"]
        if video.ndim == 6:
            views = video.shape[1]
            out = features_fn(video.flatten(0, 1)).float()
            out = out.view(video.shape[0], views, -1).mean(1)
        else:
            out = features_fn(video).float()
        features.append(out.cpu())
        labels.append(batch["label"].cpu())
    if not features:
        raise ValueError("the probe's loader gave no batches: check its shards")
    return torch.cat(features), torch.cat(labels)


def fit_linear_head(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int, weight_decay: float, settings: ProbeSettings
) -> nn.Linear:
    """A linear classifier (standardisation folded in) trained with AdamW + cosine on the given features."""
    return fit_linear_heads(features, labels, num_classes, (weight_decay,), settings)[0]


def fit_linear_heads(
    features: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    weight_decays: tuple[float, ...],
    settings: ProbeSettings,
) -> list[nn.Linear]:
    """One classifier per weight decay, trained together: each minibatch is gathered once and scored by every
    head in one matmul; the summed loss gives each head exactly its own gradient (no parameter is shared) and
    AdamW's per-parameter update with its own decay, so each equals a separate fit (tests check it)."""
    if len(labels) < 2:
        raise ValueError(f"a linear probe needs at least 2 training clips, got {len(labels)}")
    mean, std = features.mean(0), features.std(0)
    std = torch.where(std > 1e-6 * std.max().clamp_min(1e-30), std, torch.ones_like(std))  # constant: left as is
    heads = [nn.Linear(features.shape[1], num_classes) for _ in weight_decays]
    for head in heads:
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
    generator = torch.Generator().manual_seed(settings.seed)
    normalised = (features - mean) / std
    steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
    total = settings.epochs * steps_per_epoch
    groups = [{"params": head.parameters(), "weight_decay": decay} for head, decay in zip(heads, weight_decays)]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, 0))
    for _ in range(settings.epochs):
        order = torch.randperm(len(labels), generator=generator)
        for start in range(0, len(labels), settings.batch_size):
            rows = order[start : start + settings.batch_size]
            weight = torch.cat([head.weight for head in heads])  # [heads x classes, D]
            bias = torch.cat([head.bias for head in heads])
            logits = F.linear(normalised[rows], weight, bias).view(len(rows), len(heads), num_classes)
            target = labels[rows, None].expand(-1, len(heads))
            loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum") / len(rows)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return [_fold_standardisation(head, mean, std) for head in heads]


def _fold_standardisation(head: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> nn.Linear:
    """The same classifier on raw features: W (x - m) / s + b = (W / s) x + (b - W m / s)."""
    folded = nn.Linear(head.in_features, head.out_features)
    with torch.no_grad():
        folded.weight.copy_(head.weight / std)
        folded.bias.copy_(head.bias - (head.weight / std) @ mean)
    return folded


def accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Top-k accuracy (k capped at the class count, as the classification recipe's ``top5``)."""
    classes = logits.shape[1]
    return multiclass_accuracy(logits, labels, classes, top_k=min(k, classes), average="micro").item()


def majority_top1(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Top-1 of always answering the most frequent class of ``labels`` (0 for no labels)."""
    counts = torch.bincount(labels.long(), minlength=num_classes)
    return counts.max() / counts.sum().clamp_min(1)


def choose_weight_decay(features: torch.Tensor, labels: torch.Tensor, num_classes: int, settings: ProbeSettings):
    """The weight decay with the best top-1 on a held-out fifth of the training features (ties: the smallest)."""
    if len(settings.weight_decays) == 1:
        return settings.weight_decays[0], {}
    if len(labels) < 4:
        raise ValueError(f"choosing the weight decay holds out a fifth of the clips: {len(labels)} are too few")
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(settings.seed))
    cut = max(1, int(len(labels) * settings.holdout))
    held, kept = order[:cut], order[cut:]
    heads = fit_linear_heads(features[kept], labels[kept], num_classes, settings.weight_decays, settings)
    scores = {}
    with torch.no_grad():
        for decay, head in zip(settings.weight_decays, heads):
            scores[decay] = accuracy(head(features[held]), labels[held])
    return max(scores, key=lambda decay: (scores[decay], -decay)), scores


def probe(
    features_fn,
    train_loader: DataLoader,
    test_loader: DataLoader,
    num_classes: int,
    settings: ProbeSettings,
    prepare=None,
) -> dict:
    """Extract, choose the weight decay, fit on all training features, and test: a dict of figures."""
    start = time.perf_counter()
    train_x, train_y = extract_features(features_fn, train_loader, prepare)
    decay, scores = choose_weight_decay(train_x, train_y, num_classes, settings)
    head = fit_linear_head(train_x, train_y, num_classes, decay, settings)
    train_seconds = time.perf_counter() - start
    test_x, test_y = extract_features(features_fn, test_loader, prepare)
    with torch.no_grad():
        logits = head(test_x)
    return {
        "top1": accuracy(logits, test_y, 1),
        "top5": accuracy(logits, test_y, 5),
        "chance_top1": 1 / num_classes,
        "majority_top1": majority_top1(test_y, num_classes).item(),
        "weight_decay": decay,
        "holdout_top1": scores,
        "train_clips": len(train_y),
        "test_clips": len(test_y),
        "train_seconds": train_seconds,
    }


def run(args: list[str], settings: ProbeSettings | None = None) -> dict:
    """The probe of ``--model.init_from``'s encoder, configured like ``vfm.cli fit --config configs/linear_probe.yaml``.

    Training features come from one pass over ``data.train_shards`` with the evaluation transform (no crops,
    middle frames); test features from ``data.test_shards`` (default: the validation shards). ``--probe.<field>``
    arguments set `ProbeSettings` fields.
    """
    from lightning.pytorch.utilities import move_data_to_device

    from vfm.cli import main as cli
    from vfm.recipes.finetune import datamodule_classes

    args, settings = _probe_arguments(list(args), settings or ProbeSettings())
    parsed = cli([*args, "--trainer.logger=false"], run=False)  # nothing is logged or checkpointed
    module, data, trainer = parsed.model, parsed.datamodule, parsed.trainer
    if not getattr(module.hparams, "linear_probe", False) or not module.hparams.get("init_from"):
        raise ValueError("the cached linear probe needs a VideoClassification with linear_probe: true and init_from")
    classes = datamodule_classes(data)  # the probe needs a class list even where the recipe has num_classes
    if module.head is None:
        module.build_head_for(classes)
    module.setup("fit")  # loads the init_from encoder
    device = trainer.strategy.root_device
    module.to(device).eval()

    def prepare(batch: dict) -> dict:
        return data.on_after_batch_transfer(move_data_to_device(batch, device), 0)

    def features(video: torch.Tensor) -> torch.Tensor:
        with trainer.precision_plugin.forward_context():  # bf16 autocast where the trainer runs bf16-mixed
            return module.features(video)

    train_loader = data._loader(data.eval_dataset(data.hparams.train_shards))
    return probe(features, train_loader, data.test_dataloader(), len(classes), settings, prepare)


def _probe_arguments(args: list[str], settings: ProbeSettings) -> tuple[list[str], ProbeSettings]:
    """``--probe.epochs 100`` / ``--probe.lr=1e-3`` taken out of ``args`` into a copy of ``settings``."""
    types = {field.name: field.type for field in fields(ProbeSettings)}
    values, rest, index = {}, [], 0
    while index < len(args):
        token = args[index]
        if not token.startswith("--probe."):
            rest.append(token)
            index += 1
            continue
        name, _, value = token[len("--probe.") :].partition("=")
        if not value:
            index += 1
            if index == len(args):
                raise ValueError(f"{token} needs a value")
            value = args[index]
        if name not in types or name == "weight_decays":
            raise ValueError(f"unknown probe setting {name!r}: use one of {sorted(set(types) - {'weight_decays'})}")
        values[name] = int(value) if types[name] in (int, "int") else float(value)
        index += 1
    return rest, ProbeSettings(**{**vars(settings), **values})


def main(argv: list[str] | None = None) -> dict:
    result = run(sys.argv[1:] if argv is None else list(argv))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
