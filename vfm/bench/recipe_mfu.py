"""Model FLOPs utilisation of one training step of each recipe at paper scale (ViT-B/16, 8 frames, 224 px).

On the CPU (``mfu_cpu_<recipe>``): batch 2 under bf16 autocast, against this machine's bf16 matmul peak measured
in the same run, as ``mfu_cpu`` of the model-step benchmark does for post-pretraining. On a GPU
(``mfu_gpu_<recipe>``): bf16 autocast, batch ``gpu_batch_size``, against the dense bf16 tensor-core peak of the
device (`vfm.flops.GPU_PEAK_FLOPS`), with samples/s and peak memory. FLOPs are counted by
`vfm.flops.count_step_flops` (forward + backward, the recipe's own dropping; for UMT the frozen teacher's forward
too). Recipes register a factory in ``RECIPES``: a function of (frames, image size) returning the LightningModule.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable

import torch

from vfm.flops import count_step_flops, gpu_peak_flops, matmul_peak
from vfm.recipes.optim import build_adamw


def _long_video(num_frames: int, image_size: int) -> torch.nn.Module:
    from vfm.recipes.long_video import LongVideoContrastive

    return LongVideoContrastive(model="ViT-B-16", num_frames=num_frames)  # 75% masking, all layers trained


def _with_random_teacher(recipe, num_frames: int, model: str):
    """Attaches UMT's frozen teacher as `build_teacher` makes it from a file (the recipe's teacher settings: an
    image CLIP run frame by frame, bf16 autocast, last 6 blocks aligned at paper scale), with random weights."""
    from vfm.models import VideoViT
    from vfm.models.interchange import video_config_from_model
    from vfm.models.teacher import FrozenTeacher
    from vfm.models.unmasked_teacher import TeacherAlignment

    h = recipe.hparams
    config = video_config_from_model(
        model, attention=h.teacher_attention, num_frames=num_frames, drop_ratio=0.0, drop_path_rate=0.0
    )
    teacher = FrozenTeacher(VideoViT(**config), h.align_layers, h.teacher_autocast)
    recipe.align = TeacherAlignment(teacher, recipe.video.width, recipe.video.ln_post.eps)
    recipe.align.check_student(recipe.video, recipe.video_config["image_size"])
    return recipe


def _umt(num_frames: int, image_size: int, teacher_model: str = "ViT-B-16", **sizes) -> torch.nn.Module:
    from vfm.recipes.umt import UnmaskedTeacher

    student = {"num_frames": num_frames, "image_size": image_size} | sizes.pop("student", {})
    recipe = UnmaskedTeacher(student=student, **sizes)  # semantic masking of 80% of the patches
    return _with_random_teacher(recipe, num_frames, teacher_model)


def _umt_multimodal(num_frames: int, image_size: int, teacher_model: str = "ViT-B-16", **sizes) -> torch.nn.Module:
    from vfm.recipes.umt_multimodal import UnmaskedTeacherMultimodal

    student = {"num_frames": num_frames, "image_size": image_size} | sizes.pop("student", {})
    # configs/umt_multimodal.yaml: random BERT-base fused from layer 9, 80% per-frame masking, UTA
    recipe = UnmaskedTeacherMultimodal(student=student, mask_mode="per_frame", **sizes)
    return _with_random_teacher(recipe, num_frames, teacher_model)


RECIPES: dict[str, Callable[[int, int], torch.nn.Module]] = {
    "long_video": _long_video,
    "umt": _umt,
    "umt_multimodal": _umt_multimodal,
}
CLIP_TOKENS = (49406, 49407, 49000)  # start, end, bound of the random ids


def text_tokens(recipe: torch.nn.Module) -> tuple[int, int, int]:
    """(start, end, bound of the random ids) of the recipe's tokenizer: BERT's ids for UMT stage 2, else CLIP's."""
    special = getattr(recipe, "special_ids", None)
    return (special["cls"], special["sep"], recipe.text.vocab_size) if special else CLIP_TOKENS


def video_text_batch(
    batch_size: int, num_frames: int, size: int, device: torch.device, context: int = 32, tokens=CLIP_TOKENS
) -> dict:
    start, end, bound = tokens
    text = torch.randint(1, bound, (batch_size, context))
    text[:, 0], text[:, 12], text[:, 13:] = start, end, 0
    return {
        "video": torch.randn(batch_size, num_frames, 3, size, size, device=device),
        "text": text.to(device),
        "text_mask": (text != 0).to(device),
        "caption": [f"caption {i}" for i in range(batch_size)],
    }


class RecipeStep:
    """One recipe, its AdamW and one batch on a device: a bf16-autocast training step to time and count."""

    def __init__(self, factory: Callable, batch_size: int, num_frames: int, size: int, device: torch.device) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random towers: only shapes matter
            self.recipe = factory(num_frames, size).to(device).train()
        self.recipe.log = self.recipe.log_dict = lambda *args, **kwargs: None  # no trainer attached
        self.optimizer = build_adamw(self.recipe, lr=1e-4, weight_decay=0.05, betas=(0.9, 0.98))  # fused, as trained
        tokens = text_tokens(self.recipe)
        self.batch, self.device = video_text_batch(batch_size, num_frames, size, device, tokens=tokens), device

    def step(self, counter=None) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            loss = self.recipe.training_step(self.batch, 0)
        if counter is not None:
            counter.start_backward()
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def seconds(self, repeats: int) -> float:
        self.step()  # warm-up
        times = []
        for _ in range(repeats):
            _sync(self.device)
            start = time.perf_counter()
            self.step()
            _sync(self.device)
            times.append(time.perf_counter() - start)
        return sorted(times)[len(times) // 2]

    def flops(self) -> int:
        with count_step_flops() as counter:
            self.step(counter)
        return counter.total


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(name: str, device: torch.device, batch_size: int, num_frames: int, size: int, repeats: int) -> dict:
    step = RecipeStep(RECIPES[name], batch_size, num_frames, size, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = step.seconds(repeats)
    flops = step.flops()
    result = {
        "step_seconds": round(seconds, 4), "model_flops_per_step": flops, "batch_size": batch_size,
        "samples_per_s": round(batch_size / seconds, 3), "tflops_per_s": round(flops / seconds / 1e12, 4),
    }  # fmt: skip
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return result


def run(
    names: tuple[str, ...] | None = None,
    cpu_batch_size: int = 2,
    gpu_batch_size: int = 32,
    num_frames: int = 8,
    size: int = 224,
    repeats: int = 3,
) -> dict:
    names = tuple(names or RECIPES)
    entries, detail = {}, {"model": "ViT-B-16", "num_frames": num_frames, "image_size": size, "dtype": "bf16"}
    cpu_peak = matmul_peak(torch.bfloat16)
    detail["cpu_matmul_peak_gflops_bf16"] = round(cpu_peak / 1e9, 1)
    for name in names:
        cpu = measure(name, torch.device("cpu"), cpu_batch_size, num_frames, size, repeats)
        entries[f"mfu_cpu_{name}"] = round(cpu["tflops_per_s"] * 1e12 / cpu_peak, 3)
        detail[f"{name}_cpu"] = cpu
        if torch.cuda.is_available():
            device = torch.device("cuda")
            gpu = measure(name, device, gpu_batch_size, num_frames, size, repeats)
            peak = gpu_peak_flops(torch.cuda.get_device_name(device), torch.bfloat16)
            if peak:
                entries[f"mfu_gpu_{name}"] = round(gpu["tflops_per_s"] * 1e12 / peak, 3)
            detail[f"{name}_gpu"] = {**gpu, "device": torch.cuda.get_device_name(device), "peak_tflops": peak}
    detail["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU available"
    return {**entries, "recipe_mfu_detail": detail}
