"""UMT stage-1 training step of vfm against the official Unmasked Teacher code, side by side on the CPU.

Both sides build the same configuration with random weights (student ViT-B/16 from scratch, frozen CLIP
ViT-B/16 teacher, 8 frames x 224 px, batch 2, semantic masking of 80% of the patches, last 6 layers aligned;
or a tiny size) and take warm-up steps, then timed steps alternating between the two (a vfm step runs before,
then after, each official step), in fp32 and under bf16 autocast. Reports the medians and their ratio
official / vfm. A third setting, ``fp32_shipped``, is each code as it runs an fp32 step on a CPU unchanged:
vfm's recipe keeps its teacher under bf16 autocast (``teacher_autocast``, the default), the official teacher
runs in fp32 (its ``torch.cuda.amp.autocast`` does nothing on a CPU); it is not the same computation.

The official code is never part of vfm: fetch OpenGVLab/unmasked_teacher yourself and pass its
``single_modality`` folder (or a copy of the files this module imports from it: ``models/``, ``engines/``,
``utils.py``, ``optim_factory.py``), unmodified:

    OMP_NUM_THREADS=2 python -m vfm.bench.umt_speed /path/to/unmasked_teacher/single_modality --size base

Official side: one call of their ``engines.engine_for_pretraining_umt.train_one_epoch`` per setting, over a
loader that hands out the same batch (already in their [B, C, T, H, W] layout) and runs the vfm steps between
theirs; an official step is timed from handing out a batch to being asked for the next: LR and weight-decay
assignment, teacher pass, masking by ``torch.multinomial`` on the teacher's CLS attention, student forward,
2 - 2 cos loss, ``loss.item()``, backward, grad norm, AdamW step, metric logging (the epoch's set-up and
summary, about 1 ms, are not timed). Models and optimiser are built as ``run_umt_pretraining.py`` builds them
with ``exp/pretraining/b16_ptk710_f8_res224.sh``. Deviations, all needed to run it on a CPU with today's
libraries:

- ``torch.cuda.amp.autocast`` (teacher and student) is CPU autocast while their step runs: bf16 in the bf16
  runs, off in the fp32 runs (as it is on a CPU unpatched); ``torch.cuda.synchronize`` is a no-op.
- Their ``NativeScalerWithGradNormCount`` keeps its ``torch.cuda.amp.GradScaler``, which disables itself
  without CUDA: no loss scaling and no unscale pass (which the GPU run pays for), the grad norm is still
  computed every step; its ``state_dict()`` reports scale 1.0 as the engine reads ``["scale"]``.
- Imports: ``torch._six`` (gone from torch) and ``tensorboardX`` are stubbed; ``optim_factory``'s imports of
  three timm optimisers renamed in timm 1.x (Nadam, NovoGrad, RAdam; AdamW does not use them) are dropped
  when it is loaded. Importing their ``models`` re-registers a few timm model names in this process only.
- Models come from their entry points (``clip_b16``, ``pretrain_umt_base_patch16_224``, ``pretrained=False``,
  ``get_model``'s arguments) rather than ``timm.create_model``, whose timm 1.x version passes a
  ``pretrained_cfg`` their constructor does not take; the tiny size builds the same classes smaller.
- Their prints (per step and per epoch) go to a silenced stdout.

vfm side: ``UnmaskedTeacher.training_step``, backward, the optimiser and warmup-cosine LR step its
``configure_optimizers`` returns, and ``zero_grad``, in a plain loop as Lightning's automatic optimisation runs
them (the Trainer's hooks, logging and progress bar are not timed). The random teacher is built in memory as
``vfm.bench.recipe_mfu`` does, in open_clip's ``ViT-B-16-quickgelu`` layout (OpenAI CLIP's QuickGELU, as the
official teacher). Differences from the recipe's defaults:

- ``mask_ratio`` is set so that vfm keeps as many patches per frame as the official code (it keeps
  N - int(0.8 N) = 40 of 196; vfm's 0.8 rounds 39.2 to 39): 1 - 40/196, the same work on both sides.
- fp32 runs set ``teacher_autocast=False``: the recipe's default runs the teacher under bf16 autocast even in
  an fp32 step, which the official code does not do on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import statistics
import sys
import time
import types
import warnings
from argparse import Namespace
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn

from vfm.bench.recipe_mfu import RECIPES
from vfm.models.masking import num_kept

BASE_LR, BATCH_REFERENCE, MIN_LR = 1.5e-4, 256, 1e-5  # run_umt_pretraining.py, scaled by batch / 256


@dataclass(frozen=True)
class Size:
    """Student and teacher sizes; the student's patch grid equals the teacher's."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    heads: int
    teacher_model: str | dict  # vfm's (open_clip) name or config of the teacher architecture
    teacher: tuple[int, int, int, int]  # official VisionTransformer: width, layers, heads, output_dim
    num_frames: int = 8
    align_layers: int = 6
    batch_size: int = 2
    mask_ratio: float = 0.8

    @property
    def patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


# vfm's vit-tiny-test image tower with OpenAI CLIP's QuickGELU
TINY_VISION = {"image_size": 32, "layers": 2, "width": 64, "head_width": 16, "patch_size": 8}
TINY_TEACHER = {"embed_dim": 32, "quick_gelu": True, "vision_cfg": TINY_VISION}
SIZES = {
    "base": Size(224, 16, 768, 12, 12, "ViT-B-16-quickgelu", (768, 12, 12, 512)),
    "tiny": Size(32, 8, 64, 2, 4, TINY_TEACHER, (64, 2, 4, 32), num_frames=4, align_layers=2),
}


def official_keep(size: Size) -> int:
    """Patches per frame the official engine keeps: N - int(N * mask_ratio)."""
    return size.patches - int(size.patches * size.mask_ratio)


def vfm_mask_ratio(size: Size) -> float:
    """vfm's mask ratio that keeps the official count per frame."""
    ratio = 1 - official_keep(size) / size.patches
    assert num_kept(size.patches, ratio) == official_keep(size)
    return ratio


def _autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


class VfmStep:
    """vfm's UMT stage-1 recipe with a random teacher, its AdamW and warmup-cosine schedule, one clip batch."""

    def __init__(self, size: Size, video: torch.Tensor, bf16: bool, teacher_bf16: bool | None = None,
                 total_steps: int = 1000) -> None:  # fmt: skip
        student = {"patch_size": size.patch_size, "width": size.width, "layers": size.layers, "heads": size.heads}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.recipe = RECIPES["umt"](
                size.num_frames, size.image_size, teacher_model=size.teacher_model, student=student,
                align_layers=size.align_layers, mask_ratio=vfm_mask_ratio(size),
                teacher_autocast=bf16 if teacher_bf16 is None else teacher_bf16,
            ).train()  # fmt: skip
        self.recipe.log = lambda *args, **kwargs: None
        # what configure_optimizers reads of a trainer: the lr is scaled by the global batch, as in a run
        data = SimpleNamespace(hparams={"batch_size": size.batch_size})
        self.recipe.trainer = SimpleNamespace(
            estimated_stepping_batches=total_steps, datamodule=data, world_size=1, accumulate_grad_batches=1
        )
        config = self.recipe.configure_optimizers()
        self.optimizer, self.scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
        self.batch, self.bf16 = {"video": video}, bf16

    def step(self) -> torch.Tensor:
        with _autocast(self.bf16):
            loss = self.recipe.training_step(self.batch, 0)
        loss.backward()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.detach()


class Official:
    """The official modules, imported from a folder with the minimal shims listed in the module docstring."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder).expanduser().resolve()
        missing = [p for p in ("models/clip.py", "models/modeling_pretrain_umt.py", "utils.py", "optim_factory.py",
                               "engines/engine_for_pretraining_umt.py") if not (folder / p).is_file()]  # fmt: skip
        if missing:
            raise FileNotFoundError(f"{folder} is not unmasked_teacher's single_modality folder: lacks {missing}")
        _stub("torch._six", inf=math.inf)
        _stub("tensorboardX", SummaryWriter=object)
        sys.path.insert(0, str(folder))
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            import models.clip as clip
            import models.modeling_pretrain_umt as pretrain
            import utils

            self.optim_factory = _load_without(folder / "optim_factory.py", "optim_factory", _RENAMED_TIMM)
            from engines import engine_for_pretraining_umt as engine
        self.clip, self.pretrain, self.utils, self.engine = clip, pretrain, utils, engine


_RENAMED_TIMM = (
    "from timm.optim.nadam import Nadam",
    "from timm.optim.novograd import NovoGrad",
    "from timm.optim.radam import RAdam",
)


def _stub(name: str, **attributes) -> None:
    try:
        __import__(name)
    except ImportError:
        module = types.ModuleType(name)
        module.__dict__.update(attributes)
        sys.modules[name] = module


def _load_without(path: Path, name: str, lines: tuple[str, ...]) -> types.ModuleType:
    """Import the file at `path` with each of `lines` replaced by binding its imported name to None."""
    source = path.read_text()
    for line in lines:
        if line not in source:
            raise RuntimeError(f"{path} changed: {line!r} not found")
        source = source.replace(line, f"{line.rsplit(' ', 1)[1]} = None")
    module = types.ModuleType(name)
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    sys.modules[name] = module
    return module


class OfficialTraining:
    """The official student, CLIP teacher, optimiser, loss scaler and schedules, trained by their engine."""

    def __init__(self, official: Official, size: Size, bf16: bool, total_steps: int = 1000) -> None:
        self.official, self.size, self.bf16 = official, size, bf16
        args = Namespace(opt="adamw", weight_decay=0.05, opt_eps=1e-8, opt_betas=[0.9, 0.95], momentum=0.9,
                         lr=BASE_LR * size.batch_size / BATCH_REFERENCE)  # fmt: skip
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            self.student, self.teacher = self._student(), self._teacher()
            self.optimizer = official.optim_factory.create_optimizer(args, self.student)
            self.scaler = official.utils.NativeScalerWithGradNormCount()
            self.lr_values = official.utils.cosine_scheduler(args.lr, MIN_LR * size.batch_size / BATCH_REFERENCE,
                                                             1, total_steps, warmup_epochs=0)  # fmt: skip
            self.wd_values = official.utils.cosine_scheduler(0.05, 0.05, 1, total_steps)
        if not self.scaler._scaler.is_enabled():  # no CUDA: the engine still reads state_dict()["scale"]
            self.scaler.state_dict = lambda: {"scale": 1.0}

    def _student(self) -> nn.Module:
        s = self.size
        kwargs = dict(use_learnable_pos_emb=False, drop_path_rate=0.1, use_checkpoint=False, checkpoint_num=0,
                      clip_decoder_embed_dim=s.width, clip_output_dim=s.teacher[3], clip_norm_type="l2",
                      num_frames=s.num_frames, tubelet_size=1, clip_return_layer=s.align_layers,
                      clip_student_return_interval=1)  # fmt: skip
        pretrain = self.official.pretrain
        if s == SIZES["base"]:
            return pretrain.pretrain_umt_base_patch16_224(pretrained=False, **kwargs)
        return pretrain.PretrainVisionTransformer(
            img_size=s.image_size, patch_size=s.patch_size, encoder_embed_dim=s.width, encoder_depth=s.layers,
            encoder_num_heads=s.heads, encoder_num_classes=0, mlp_ratio=4, qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6), **kwargs,
        )  # fmt: skip

    def _teacher(self) -> nn.Module:
        s, clip = self.size, self.official.clip
        kwargs = dict(clip_norm_type="l2", return_attn=True, clip_return_layer=s.align_layers, clip_return_interval=1)
        if s == SIZES["base"]:
            return clip.clip_b16(pretrained=False, input_resolution=s.image_size, **kwargs)
        width, layers, heads, output_dim = s.teacher
        return clip.VisionTransformer(input_resolution=s.image_size, patch_size=s.patch_size, width=width,
                                      layers=layers, heads=heads, output_dim=output_dim, **kwargs).eval()  # fmt: skip

    def train_epoch(self, loader) -> dict:
        cuda = torch.cuda
        saved = cuda.amp.autocast, cuda.synchronize
        cuda.amp.autocast, cuda.synchronize = (lambda: _autocast(self.bf16)), (lambda *args: None)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                return self.official.engine.train_one_epoch(
                    self.student, loader, self.optimizer, torch.device("cpu"), 0, self.scaler, None,
                    start_steps=0, lr_schedule_values=self.lr_values, wd_schedule_values=self.wd_values,
                    teacher_model=self.teacher, clip_input_resolution=self.size.image_size, clip_loss_type="l2",
                    clip_loss_ratio=1.0, mask_type="attention", mask_ratio=self.size.mask_ratio,
                )  # fmt: skip
        finally:
            cuda.amp.autocast, cuda.synchronize = saved


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


class AlternatingLoader:
    """The official loop's data loader: hands out `batch` (warm-up + timed rounds), times each official step from
    handing out the batch to being asked for the next, and runs a timed vfm step before it in even rounds and
    after it in odd ones."""

    def __init__(self, batch, vfm_step, repeats: int, warmup: int) -> None:
        self.batch, self.vfm_step, self.repeats, self.warmup = batch, vfm_step, repeats, warmup
        self.times: dict[str, list[float]] = {"vfm": [], "official": []}

    def __len__(self) -> int:
        return self.warmup + self.repeats

    def _record(self, name: str, round_: int, seconds: float) -> None:
        if round_ >= self.warmup:
            self.times[name].append(seconds)

    def __iter__(self):
        for round_ in range(len(self)):
            if round_ % 2 == 0:
                self._record("vfm", round_, _seconds(self.vfm_step))
            start = time.perf_counter()
            yield self.batch
            self._record("official", round_, time.perf_counter() - start)
            if round_ % 2 == 1:
                self._record("vfm", round_, _seconds(self.vfm_step))


PRECISIONS = ("fp32", "bf16", "fp32_shipped")


def compare(official: Official | None, size: Size, precision: str, repeats: int = 3, warmup: int = 1) -> dict:
    """Median step seconds of both sides (alternating, the order flipped every round) and official / vfm."""
    bf16 = precision == "bf16"
    torch.manual_seed(0)
    video = torch.randn(size.batch_size, size.num_frames, 3, size.image_size, size.image_size)
    vfm = VfmStep(size, video, bf16, teacher_bf16=precision != "fp32")
    if official is None:
        for _ in range(warmup):
            vfm.step()
        times = {"vfm": [_seconds(vfm.step) for _ in range(repeats)]}
    else:
        # their layout [B, C, T, H, W], and a mask their engine ignores under attention masking
        batch = (video.transpose(1, 2).contiguous(), torch.zeros(size.batch_size, 1, dtype=torch.bool))
        loader = AlternatingLoader(batch, vfm.step, repeats, warmup)
        OfficialTraining(official, size, bf16).train_epoch(loader)
        times = loader.times
    result = {f"{name}_s": round(statistics.median(t), 4) for name, t in times.items()}
    result["times_s"] = {name: [round(x, 4) for x in t] for name, t in times.items()}
    if official is not None:
        result["official_over_vfm"] = round(result["official_s"] / result["vfm_s"], 3)
    return result


def run(official_dir: str | None, sizes=("tiny", "base"), precisions=PRECISIONS[:2], repeats=3, warmup=1) -> dict:
    official = Official(official_dir) if official_dir else None
    report = {"threads": torch.get_num_threads(), "repeats": repeats, "warmup": warmup}
    for name in sizes:
        size = SIZES[name]
        for precision in precisions:
            entry = compare(official, size, precision, repeats, warmup)
            report[f"{name}_{precision}"] = entry
            print(json.dumps({f"{name}_{precision}": entry}), flush=True)
        report[f"{name}_kept_per_frame"] = official_keep(size)
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("official", nargs="?", help="unmasked_teacher's single_modality folder (omit: vfm only)")
    parser.add_argument("--size", nargs="+", choices=sorted(SIZES), default=["tiny", "base"])
    parser.add_argument("--precision", nargs="+", choices=PRECISIONS, default=list(PRECISIONS[:2]))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)
    report = run(args.official, tuple(args.size), tuple(args.precision), args.repeats, args.warmup)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
