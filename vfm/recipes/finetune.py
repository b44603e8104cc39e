"""Video classification: fine-tune, or linear-probe, a video encoder taken from any recipe or imported file.

``init_from`` names a Lightning checkpoint of any vfm recipe (its ``video.`` tower, ``init_prefix``) or an
external file (open_clip / OpenAI CLIP, ViCLIP, UMT); the architecture is read from it and saved in this
run's hyper-parameters, so this run's own checkpoints rebuild without the file. ``--ckpt_path`` is different:
it resumes this run (optimizer, schedule, data state).
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.aggregation import CatMetric
from torchmetrics.classification import MulticlassAccuracy

from vfm.data.samples import load_classes
from vfm.eval.linear_probe import majority_top1
from vfm.models import VideoViT
from vfm.models.convert import ConvertedWeights, strip_prefix
from vfm.models.heads import head_feature_dim, head_features
from vfm.models.interchange import is_complete_video_config, resolve_video_config
from vfm.models.pretrained import load_weights
from vfm.recipes.checkpoints import load_init_weights
from vfm.recipes.layer_decay import build_adamw_layer_decay, vit_layer_id
from vfm.recipes.optim import warmup_cosine


class VideoClassification(L.LightningModule):
    """Video classifier over a `VideoViT`: full fine-tuning with layer-wise lr decay, or a linear probe.

    Args:
        init_from: checkpoint of any recipe or external weights file to initialise the encoder from.
        init_prefix: the tower of the checkpoint to take (``video.`` in every vfm recipe).
        model: open_clip architecture name or config dict, when ``init_from`` does not name one.
        video_config: VideoViT arguments over those of the checkpoint (e.g. ``pool: mean``); filled in with
            the resolved architecture and saved.
        num_classes: default: the length of the datamodule's class list (``data.classes``).
        linear_probe: freeze the encoder (eval mode, no gradients, not in the optimizer); train the head.
        features: the head reads the pooled ``pre_logits`` (encoder width), the projected ``embedding``, or
            ``grid``: the token map averaged over a (time, space, space) grid of ``grid_size`` cells, kept apart
            (where and when things happen: what motion classes differ in; needs no token dropping).
        grid_size: (time cells, cells per side) of ``grid`` features.
        head_dropout, head_init_scale: dropout before the head; scale of its initial weights.
        drop_path_rate: stochastic depth of the encoder in fine-tuning.
        label_smoothing: of the cross-entropy targets (also with mixup / cutmix).
        mixup_alpha, cutmix_alpha, mix_prob: timm's Mixup over whole clips (0 turns it off).
        lr, layer_decay, weight_decay, betas, warmup, min_lr_ratio: AdamW, block i at lr * decay ** (L - i),
            warmup (fraction or steps) then cosine.
        grad_checkpointing: recompute block activations in backward.
    """

    def __init__(
        self,
        init_from: str | None = None,
        init_prefix: str = "video.",
        model: str | dict | None = None,
        video_config: dict[str, Any] | None = None,
        num_classes: int | None = None,
        linear_probe: bool = False,
        features: Literal["pre_logits", "embedding", "grid"] = "pre_logits",
        grid_size: tuple[int, int] = (4, 2),
        head_dropout: float = 0.0,
        head_init_scale: float = 1.0,
        drop_path_rate: float = 0.1,
        label_smoothing: float = 0.1,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        mix_prob: float = 1.0,
        lr: float = 5e-4,
        layer_decay: float = 0.75,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup: float = 0.1,
        min_lr_ratio: float = 0.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # read the init file here only when its architecture is needed (not when a checkpoint is rebuilt)
        describes = is_complete_video_config(video_config)
        self._init_weights = load_init_weights(init_from) if init_from and not describes else None
        self.hparams.video_config = resolve_video_config(self._init_weights, model, video_config)
        if features == "grid" and self.hparams.video_config.get("drop_ratio", 0) > 0:
            raise ValueError("grid features read every token: set video_config.drop_ratio to 0")
        path_rate = 0.0 if linear_probe else drop_path_rate
        self.video = VideoViT(**self.hparams.video_config, drop_path_rate=path_rate)
        self.video.set_grad_checkpointing(grad_checkpointing and not linear_probe)
        if linear_probe:
            self.video.requires_grad_(False)
        self.head_dropout = nn.Dropout(head_dropout)
        self.class_names: list[str] | None = None
        self.head: nn.Linear | None = None
        if num_classes is not None:
            self._build_head(num_classes)

    # ---- building -------------------------------------------------------------------------------
    def _build_head(self, num_classes: int) -> None:
        self.hparams.num_classes = num_classes
        h = self.hparams
        self.head = nn.Linear(head_feature_dim(self.video, h.features, tuple(h.grid_size)), num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02 * self.hparams.head_init_scale)
        nn.init.zeros_(self.head.bias)
        top_k = min(5, num_classes)
        for stage in ("val", "test"):
            setattr(self, f"{stage}_top1", MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{stage}_top5", MulticlassAccuracy(num_classes, top_k=top_k, average="micro"))
        self.test_labels = CatMetric()
        self.val_loss = MeanMetric()
        self.mixup = None
        if h.mixup_alpha > 0 or h.cutmix_alpha > 0:
            self.mixup = Mixup(
                h.mixup_alpha,
                h.cutmix_alpha,
                prob=h.mix_prob,
                label_smoothing=h.label_smoothing,
                num_classes=num_classes,
            )

    def setup(self, stage: str) -> None:
        if self.head is None:
            self.build_head_for(datamodule_classes(getattr(self.trainer, "datamodule", None)))
        if stage == "fit" and self.hparams.init_from:
            self._load_init(self._init_weights or load_init_weights(self.hparams.init_from))
            self._init_weights = None  # the full checkpoint is not kept in memory

    def build_head_for(self, classes: list[str]) -> None:
        """A new head over these class names (``setup`` gives it the datamodule's class list)."""
        self.class_names = list(classes)
        self._build_head(len(self.class_names))

    def _load_init(self, weights: ConvertedWeights) -> None:
        prefix = self.hparams.init_prefix
        tower = strip_prefix(weights.state, prefix)
        if not tower:
            raise KeyError(f"no weights under {prefix!r} in {self.hparams.init_from}; it has {weights.prefixes()}")
        report = load_weights(self.video, tower)
        if any(".temporal_" in key for key in report.missing):
            # factorised attention over an encoder trained without it: the temporal branch starts as a copy of
            # the loaded spatial attention behind a zero gate (not as random weights)
            self.video.init_temporal_from_spatial()
        rank_zero_info(
            f"init_from {self.hparams.init_from} ({weights.format}): loaded {len(report.loaded)} tensors under "
            f"{prefix!r}; left at init: {report.missing or 'none'}; ignored: {report.unexpected or 'none'}; "
            f"not converted: {sorted(weights.skipped) or 'none'}"
        )

    def train(self, mode: bool = True) -> VideoClassification:
        super().train(mode)
        if self.hparams.linear_probe:
            self.video.eval()  # a probed encoder stays in eval mode (no drop path) whatever Lightning asks
        return self

    # ---- forward --------------------------------------------------------------------------------
    def features(self, video: torch.Tensor) -> torch.Tensor:
        h = self.hparams
        with torch.set_grad_enabled(torch.is_grad_enabled() and not h.linear_probe):
            return head_features(self.video, video, h.features, tuple(h.grid_size))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """Normalised frames [B, T, C, H, W] -> class logits [B, num_classes]."""
        return self.head(self.head_dropout(self.features(video)))

    def predict_proba(self, video: torch.Tensor) -> torch.Tensor:
        """Class probabilities; a multi-view batch [B, V, T, C, H, W] averages those of its V views."""
        if video.ndim == 6:
            batch, views = video.shape[:2]
            return self(video.flatten(0, 1)).softmax(-1).view(batch, views, -1).mean(1)
        return self(video).softmax(-1)

    # ---- steps ----------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        video, labels = batch["video"], batch["label"]
        if self.mixup is not None:
            if video.shape[0] % 2:
                raise ValueError(f"mixup / cutmix need an even batch size, got {video.shape[0]}")
            frames = video.shape[1]
            mixed, targets = self.mixup(video.flatten(1, 2), labels)  # cutmix boxes over H, W of every frame
            loss = SoftTargetCrossEntropy()(self(mixed.unflatten(1, (frames, -1))), targets)
        else:
            loss = F.cross_entropy(self(video), labels, label_smoothing=self.hparams.label_smoothing)
        self.log("train/loss", loss, prog_bar=True, batch_size=video.shape[0])
        return loss

    def _eval_step(self, batch: dict, stage: str) -> None:
        probs, labels = self.predict_proba(batch["video"]), batch["label"]
        getattr(self, f"{stage}_top1").update(probs, labels)
        getattr(self, f"{stage}_top5").update(probs, labels)
        if stage == "test":
            self.test_labels.update(labels.float())
        else:
            self.val_loss.update(F.nll_loss(probs.clamp_min(1e-8).log(), labels), weight=labels.shape[0])

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def _log_eval(self, stage: str) -> None:
        metrics = {
            f"{stage}/top1": getattr(self, f"{stage}_top1").compute(),
            f"{stage}/top5": getattr(self, f"{stage}_top5").compute(),
            f"{stage}/chance_top1": torch.tensor(1.0 / self.hparams.num_classes),
        }
        if stage == "test":
            metrics[f"{stage}/majority_top1"] = majority_top1(self.test_labels.compute(), self.hparams.num_classes)
            self.test_labels.reset()
        else:
            metrics[f"{stage}/loss"] = self.val_loss.compute()
            self.val_loss.reset()
        getattr(self, f"{stage}_top1").reset()
        getattr(self, f"{stage}_top5").reset()
        self.log_dict(metrics, prog_bar=stage == "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        video = batch["video"]
        return {
            "key": batch["key"],
            "video": F.normalize(self.video(video).float(), dim=-1).cpu(),
            "probs": self.predict_proba(video).float().cpu(),
        }

    # ---- optimisation and checkpoints -------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        layers = len(self.video.blocks)
        optimizer = build_adamw_layer_decay(
            self, h.lr, h.weight_decay, h.betas, h.layer_decay, layers, lambda name: vit_layer_id(name, layers)
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(total, h.warmup, h.min_lr_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # self-describing: export and init_from rebuild the encoder and name the classes from the file alone
        checkpoint["video_config"] = dict(self.hparams.video_config)
        checkpoint["classes"] = self.class_names

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.class_names = checkpoint.get("classes")


def datamodule_classes(data: L.LightningDataModule | None) -> list[str]:
    """The class names of a datamodule with ``label_key`` and ``classes`` set; a clear error otherwise."""
    hparams = getattr(data, "hparams", {})
    classes = load_classes(hparams.get("classes"), hparams.get("label_key"))
    if not hparams.get("label_key") or not classes:
        raise ValueError(
            "classification needs labels: set data.label_key and data.classes (a class list file), "
            "or model.num_classes with integer labels"
        )
    return classes
