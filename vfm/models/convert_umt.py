"""Unmasked Teacher weights (OpenGVLab/unmasked_teacher) <-> vfm's layout (``video.*``, ``align.*``, ``text.*``).

Released layouts (files may be wrapped as ``{"model": ...}``):

- stage 1: ``encoder.patch_embed.proj`` (Conv3d, tubelet 1), ``encoder.blocks.{i}.{norm1, attn.qkv, attn.q_bias,
  attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}``, ``encoder.norm``, and the alignment
  heads ``clip_decoder.{k}.{head, norm}``;
- stage 2: the same student under ``vision_encoder.encoder.``, plus ``vision_encoder.pool_norm``,
  ``vision_proj``, ``text_encoder.bert.*``, ``text_proj``, ``itm_head``, ``temp`` and ``clip_teacher.*``.

The student has no CLS token, mean pooling and a fixed sin-cos position table, so it becomes a CLS-free,
mean-pooled `VideoViT`. The other trained parts map onto the UMT recipes' own names (`vfm.recipes.umt`,
`vfm.recipes.umt_multimodal`): the alignment heads ``clip_decoder.{k}`` -> ``align.heads.heads.{k}``, and in stage
2 ``pool_norm``, ``vision_proj``, ``text_proj``, ``itm_head``, ``temp`` (-> ``vtc.logit_scale.log_scale``) and the
BERT ``text_encoder.{bert, cls}`` -> ``text.{bert, cls}``; `export_umt` writes them back. The teacher
(``clip_teacher.*``) is skipped: vfm never stores a teacher with its student.

Two differences remain: the patch embedding's bias has no `VideoViT` counterpart (reported as skipped), and
UMT's position table is 1D over the flattened (t, h, w) index where VideoViT's `sincos` is separable 3D. A
converted student is thus an initialisation for fine-tuning or further training, not the identical function.
"""

from __future__ import annotations

from typing import Any

import torch

from .convert import ConvertedWeights, count_blocks, strip_prefix

STAGE1 = "encoder."
STAGE2 = "vision_encoder.encoder."
HEAD_WIDTH = 64  # UMT ViT-B/16 and L/16 use 64-wide heads; the heads cannot be read from the shapes
BLOCK_RENAMES = {
    "norm1.": "ln_1.",
    "attn.qkv.weight": "attn.in_proj_weight",
    "attn.proj.": "attn.out_proj.",
    "norm2.": "ln_2.",
    "mlp.fc1.": "mlp.c_fc.",
    "mlp.fc2.": "mlp.c_proj.",
    "gamma_1": "ls_1.gamma",
    "gamma_2": "ls_2.gamma",
}


def is_umt(state: dict[str, torch.Tensor]) -> bool:
    return any(key in state for key in (STAGE1 + "patch_embed.proj.weight", STAGE2 + "patch_embed.proj.weight"))


def _student_prefix(state: dict[str, torch.Tensor]) -> str:
    return STAGE2 if STAGE2 + "patch_embed.proj.weight" in state else STAGE1


def umt_video_config(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """`VideoViT` arguments of the UMT student (224 px and 8 frames: the table is not stored in the files)."""
    prefix = _student_prefix(state)
    conv = state[prefix + "patch_embed.proj.weight"]
    width = conv.shape[0]
    hidden = state[prefix + "blocks.0.mlp.fc1.weight"].shape[0]
    proj = state.get("vision_proj.weight")
    return {
        "image_size": 224,
        "patch_size": conv.shape[-1],
        "width": width,
        "layers": count_blocks(state, prefix + "blocks."),
        "heads": width // HEAD_WIDTH,
        "mlp_ratio": hidden / width,
        "output_dim": proj.shape[0] if proj is not None else None,
        "num_frames": 8,
        "ls_init_value": 1.0 if prefix + "blocks.0.gamma_1" in state else None,
        "norm_eps": 1e-6,
        "ln_pre": False,
        "cls_token": False,
        "pos_embed": "sincos",
        "pool": "mean",
    }


def _block_entry(name: str, value: torch.Tensor, block: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor] | None:
    """One block tensor in VideoViT naming; the q/v biases become one in_proj_bias (k has none in UMT)."""
    index, rest = name.split(".", 1)
    target = f"transformer.resblocks.{index}."
    if rest == "attn.q_bias":
        zeros = torch.zeros_like(value)
        return target + "attn.in_proj_bias", torch.cat([value, zeros, block.get(f"{index}.attn.v_bias", zeros)])
    if rest == "attn.v_bias":
        return None  # folded into in_proj_bias with q_bias
    for old, new in BLOCK_RENAMES.items():
        if rest.startswith(old):
            return target + new + rest[len(old) :], value
    return target + rest, value


def _convert_student(state: dict[str, torch.Tensor], prefix: str, out: dict, skipped: dict) -> None:
    student = strip_prefix(state, prefix)
    blocks = strip_prefix(student, "blocks.")
    for name, value in student.items():
        if name.startswith("blocks."):
            entry = _block_entry(name[len("blocks.") :], value, blocks)
            if entry is not None:
                out["video." + entry[0]] = entry[1]
        elif name == "patch_embed.proj.weight":
            if value.shape[2] != 1:
                raise ValueError(f"UMT tubelet size {value.shape[2]}: vfm's VideoViT embeds frames one by one")
            out["video.conv1.weight"] = value[:, :, 0]
        elif name.startswith("norm."):
            out["video.ln_post." + name[len("norm.") :]] = value
        else:
            skipped[prefix + name] = "no VideoViT counterpart (patch bias / learnable position table)"


# released name (after the student) -> vfm recipe name; both stages
DECODERS = {"clip_decoder.": "align.heads.heads.", "vision_encoder.clip_decoder.": "align.heads.heads."}
STAGE2_RENAMES = {
    "vision_encoder.pool_norm.": "pool_norm.",
    "vision_proj.": "vision_proj.",
    "text_proj.": "text_proj.",
    "itm_head.": "itm_head.",
    "text_encoder.bert.": "text.bert.",
    "text_encoder.cls.": "text.cls.",
}
TEMPERATURE = "vtc.logit_scale.log_scale"


def _rename(key: str) -> str | None:
    for old, new in (DECODERS | STAGE2_RENAMES).items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def convert_umt(state: dict[str, torch.Tensor]) -> ConvertedWeights:
    """A UMT stage-1 or stage-2 state dict -> vfm's UMT recipe layout (``video.*``, ``align.*``, ``text.*``...).

    ``vision_proj`` also becomes ``video.proj`` (its bias skipped), so a classifier or an export can use the
    projected embedding from the student alone.
    """
    if not is_umt(state):
        raise ValueError("not a UMT state dict: no encoder.patch_embed / vision_encoder.encoder.patch_embed")
    prefix = _student_prefix(state)
    converted: dict[str, torch.Tensor] = {}
    skipped: dict[str, str] = {}
    _convert_student(state, prefix, converted, skipped)
    for key, value in state.items():
        if key.startswith(prefix):
            continue
        if key == "vision_proj.weight":
            converted["video.proj"] = value.T.contiguous()
        if key == "temp":
            converted[TEMPERATURE] = torch.log(1 / value.float()).reshape(1)
        elif key.startswith("clip_teacher."):
            skipped[key] = "frozen teacher: vfm records the teacher's file, never its weights"
        elif key.endswith("embeddings.position_ids"):
            skipped[key] = "BERT position ids: a constant buffer"
        elif (name := _rename(key)) is not None:
            converted[name] = value
        else:
            skipped[key] = "no counterpart in vfm's UMT recipes"
    return ConvertedWeights(converted, "umt", None, video_config=umt_video_config(state), skipped=skipped)


def export_umt(state: dict[str, torch.Tensor], stage: int) -> dict[str, torch.Tensor]:
    """vfm's UMT recipe state dict -> the released layout of `stage` (1 or 2); the inverse of `convert_umt`
    except for what vfm does not have (patch-embedding bias, teacher)."""
    prefix = STAGE1 if stage == 1 else STAGE2
    renames = {new: old for old, new in STAGE2_RENAMES.items()}
    renames["align.heads.heads."] = "clip_decoder." if stage == 1 else "vision_encoder.clip_decoder."
    inverse_blocks = {new: old for old, new in BLOCK_RENAMES.items() if not old.startswith("attn.qkv")}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("video.transformer.resblocks."):
            index, rest = key[len("video.transformer.resblocks.") :].split(".", 1)
            target = f"{prefix}blocks.{index}."
            if rest == "attn.in_proj_weight":
                out[target + "attn.qkv.weight"] = value
            elif rest == "attn.in_proj_bias":
                q_bias, _, v_bias = value.chunk(3)
                out[target + "attn.q_bias"], out[target + "attn.v_bias"] = q_bias, v_bias
            else:
                old = next((o for n, o in inverse_blocks.items() if rest.startswith(n)), None)
                out[target + (old + rest[len(_new_of(old)) :] if old else rest)] = value
        elif key == "video.conv1.weight":
            out[prefix + "patch_embed.proj.weight"] = value[:, :, None]
        elif key.startswith("video.ln_post."):
            out[prefix + "norm." + key[len("video.ln_post.") :]] = value
        elif key == TEMPERATURE:
            out["temp"] = (1 / value.float().exp()).reshape(())
        elif (old := next((o for n, o in renames.items() if key.startswith(n)), None)) is not None:
            new = next(n for n, o in renames.items() if o == old)
            out[old + key[len(new) :]] = value
    return out


def _new_of(old: str) -> str:
    return BLOCK_RENAMES[old]
