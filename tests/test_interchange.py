"""Weight converters (open_clip, ViCLIP, UMT) into vfm's towers, checked against reference computations."""

import pytest
import torch
from conftest import random_clip_file
from einops import rearrange

from vfm.models import VideoViT, create_clip
from vfm.models.convert_viclip import convert_viclip
from vfm.models.interchange import build_text_encoder, convert_state_dict, resolve_video_config, text_config_from_model
from vfm.models.pretrained import load_weights, unwrap_state_dict
from vfm.recipes.checkpoints import load_init_weights
from vfm.recipes.finetune import VideoClassification

# ViCLIP is a QuickGELU CLIP without layer scale and with CLIP's 64-wide heads, here at a tiny size
VICLIP_LIKE = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 128, "head_width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 128, "heads": 2, "layers": 2},
}
FRAMES = 4


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="randomly initialised"):
        return create_clip(VICLIP_LIKE).eval()


@pytest.fixture(scope="module")
def viclip_file(clip, tmp_path_factory):
    """A tiny checkpoint in the released ViCLIP layout ({"model": ...}, the names of InternVideo's ViCLIP)."""
    state = {f"vision_encoder.{k}": v.clone() for k, v in clip.visual.state_dict().items()}
    state["vision_encoder.conv1.weight"] = clip.visual.conv1.weight.detach()[:, :, None].clone()  # Conv3d (1, p, p)
    state["vision_encoder.temporal_positional_embedding"] = 0.1 * torch.randn(1, FRAMES, clip.visual.conv1.out_channels)
    text_keys = ("token_embedding", "positional_embedding", "transformer.", "ln_final", "text_projection")
    state |= {f"text_encoder.{k}": v.clone() for k, v in clip.state_dict().items() if k.startswith(text_keys)}
    state["temp"] = torch.tensor(0.01)
    path = tmp_path_factory.mktemp("viclip") / "ViClip-tiny.pth"
    torch.save({"model": state}, path)
    return path


def viclip_reference(clip, temporal: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """ViCLIP's video forward as its paper/code describe it: tokens patch-major ((n t)), the temporal embedding
    on patch tokens only, CLS first; CLIP's blocks and pooling."""
    visual, batch, frames = clip.visual, video.shape[0], video.shape[1]
    x = visual.conv1(video.flatten(0, 1)).flatten(2).transpose(1, 2)  # [(b t), n, d]
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + visual.positional_embedding
    cls, x = x[:batch, :1], x[:, 1:]
    x = rearrange(x, "(b t) n d -> (b n) t d", b=batch, t=frames) + temporal
    x = rearrange(x, "(b n) t d -> b (n t) d", b=batch)
    x = visual.ln_post(visual.transformer(visual.ln_pre(torch.cat([cls, x], 1))))
    return x[:, 0] @ visual.proj


def test_viclip_converts_to_the_same_video_and_text_functions(clip, viclip_file):
    converted = convert_viclip(unwrap_state_dict(torch.load(viclip_file, weights_only=True)))
    assert converted.skipped == {"temp": "contrastive temperature: not part of a tower"}
    assert converted.video_config == {"num_frames": FRAMES}
    video = VideoViT(**resolve_video_config(converted, None, None)).eval()
    report = load_weights(video, {k[6:]: v for k, v in converted.state.items() if k.startswith("video.")})
    assert not report.missing and not report.unexpected
    text = build_text_encoder(text_config_from_model(converted.model)).eval()
    report = load_weights(text, {k[5:]: v for k, v in converted.state.items() if k.startswith("text.")})
    assert report.missing == ["mask_embedding"] and not report.unexpected  # vfm's own MLM mask vector
    temporal = torch.load(viclip_file, weights_only=True)["model"]["vision_encoder.temporal_positional_embedding"]
    clips = torch.randn(2, FRAMES, 3, 32, 32)
    tokens = torch.randint(1, 400, (2, 32))
    tokens[:, 0], tokens[:, 9], tokens[:, 10:] = 49406, 49407, 0
    with torch.no_grad():
        torch.testing.assert_close(video(clips), viclip_reference(clip, temporal[0], clips), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(text(tokens).embedding, clip.encode_text(tokens), atol=1e-5, rtol=1e-4)


def test_init_from_an_imported_file_reads_its_architecture(clip, viclip_file, tmp_path):
    open_clip_file = tmp_path / "open_clip_model.bin"
    torch.save(clip.state_dict(), open_clip_file)
    # an open_clip file does not say which activation it was trained with: the model name (or config) does
    for path, model in ((viclip_file, None), (open_clip_file, VICLIP_LIKE)):
        recipe = VideoClassification(init_from=str(path), model=model, num_classes=3)
        recipe.setup("fit")
        config = recipe.hparams.video_config
        assert (config["width"], config["layers"], config["patch_size"], config["quick_gelu"]) == (128, 2, 8, True)
        reference = VideoViT.from_open_clip(clip.visual, num_frames=FRAMES)
        for name in ("conv1.weight", "transformer.resblocks.1.mlp.c_proj.weight", "proj"):
            assert torch.equal(recipe.video.state_dict()[name], reference.state_dict()[name]), (path.name, name)
    assert load_init_weights(open_clip_file).skipped == {"logit_scale": "contrastive temperature: not part of a tower"}


def umt_block_reference(state: dict, prefix: str, x: torch.Tensor, heads: int) -> torch.Tensor:
    """One UMT student block: qkv with (q_bias, 0, v_bias), layer scale gammas, eps 1e-6, GELU MLP."""

    def norm(name, y):
        return torch.nn.functional.layer_norm(
            y, y.shape[-1:], state[f"{prefix}{name}.weight"], state[f"{prefix}{name}.bias"], eps=1e-6
        )

    q_bias, v_bias = state[prefix + "attn.q_bias"], state[prefix + "attn.v_bias"]
    qkv = torch.nn.functional.linear(
        norm("norm1", x), state[prefix + "attn.qkv.weight"], torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    )
    q, k, v = rearrange(qkv, "b n (three h d) -> three b h n d", three=3, h=heads)
    attn = rearrange(torch.nn.functional.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
    x = x + state[prefix + "gamma_1"] * torch.nn.functional.linear(
        attn, state[prefix + "attn.proj.weight"], state[prefix + "attn.proj.bias"]
    )
    hidden = torch.nn.functional.gelu(
        torch.nn.functional.linear(norm("norm2", x), state[prefix + "mlp.fc1.weight"], state[prefix + "mlp.fc1.bias"])
    )
    out = torch.nn.functional.linear(hidden, state[prefix + "mlp.fc2.weight"], state[prefix + "mlp.fc2.bias"])
    return x + state[prefix + "gamma_2"] * out


def umt_state(prefix: str, width: int = 64, layers: int = 2, patch: int = 8) -> dict[str, torch.Tensor]:
    """Random tensors under UMT's released student names (tubelet 1, q/v biases, layer scale)."""
    torch.manual_seed(0)
    state = {
        f"{prefix}patch_embed.proj.weight": torch.randn(width, 3, 1, patch, patch) * 0.02,
        f"{prefix}patch_embed.proj.bias": torch.randn(width) * 0.02,
        f"{prefix}norm.weight": 1 + 0.1 * torch.randn(width),
        f"{prefix}norm.bias": 0.1 * torch.randn(width),
    }
    shapes = {
        "norm1.weight": (width,),
        "norm1.bias": (width,),
        "attn.qkv.weight": (3 * width, width),
        "attn.q_bias": (width,),
        "attn.v_bias": (width,),
        "attn.proj.weight": (width, width),
        "attn.proj.bias": (width,),
        "norm2.weight": (width,),
        "norm2.bias": (width,),
        "mlp.fc1.weight": (4 * width, width),
        "mlp.fc1.bias": (4 * width,),
        "mlp.fc2.weight": (width, 4 * width),
        "mlp.fc2.bias": (width,),
        "gamma_1": (width,),
        "gamma_2": (width,),
    }
    for i in range(layers):
        state |= {f"{prefix}blocks.{i}.{name}": 0.1 * torch.randn(shape) for name, shape in shapes.items()}
    return state


@pytest.mark.parametrize("stage", [1, 2])
def test_umt_student_converts_block_by_block(stage):
    prefix = "encoder." if stage == 1 else "vision_encoder.encoder."
    state = umt_state(prefix)
    state["clip_decoder.0.head.weight" if stage == 1 else "vision_encoder.clip_decoder.0.head.weight"] = torch.ones(1)
    if stage == 2:
        state |= {
            "vision_proj.weight": torch.randn(32, 64),
            "vision_proj.bias": torch.zeros(32),
            "text_encoder.bert.embeddings.word_embeddings.weight": torch.zeros(4, 8),
            "itm_head.weight": torch.ones(2, 8),
        }
    converted = convert_state_dict(state)
    assert converted.format == "umt"
    config = resolve_video_config(converted, None, None)
    assert (config["cls_token"], config["pool"], config["heads"]) == (False, "mean", 1)
    video = VideoViT(**config).eval()
    report = load_weights(video, {k[6:]: v for k, v in converted.state.items() if k.startswith("video.")})
    assert not report.missing and not report.unexpected
    assert f"{prefix}patch_embed.proj.bias" in converted.skipped  # reported, since VideoViT has no patch bias
    assert "align.heads.heads.0.head.weight" in converted.state  # the alignment heads keep their weights
    if stage == 2:
        assert torch.equal(video.proj, state["vision_proj.weight"].T)
        assert {"vision_proj.bias", "itm_head.weight", "text.bert.embeddings.word_embeddings.weight"} <= set(
            converted.state
        )
    tokens = torch.randn(2, 10, 64)
    with torch.no_grad():
        ours = video.blocks[0](tokens, num_frames=1, num_prefix_tokens=0)
    torch.testing.assert_close(ours, umt_block_reference(state, f"{prefix}blocks.0.", tokens, heads=1))


UMT_STUDENT = {
    "image_size": 32,
    "patch_size": 8,
    "width": 64,
    "layers": 2,
    "heads": 1,
    "num_frames": 4,
    "ls_init_value": 1.0,
}
UMT_BERT = {
    "vocab_size": 64,
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 16,
}


@pytest.fixture(scope="module")
def umt_teacher_file(tmp_path_factory):
    """A random vit-tiny-test CLIP (32 px, patch 8: the students' grid; output width 32) as the frozen teacher."""
    return random_clip_file(tmp_path_factory.mktemp("umt_teacher"), seed=1)


def released_umt(stage: int) -> dict[str, torch.Tensor]:
    """A UMT release in miniature: the released names and shapes (ViT student of width 64, 2 aligned layers
    to a 32-wide teacher; stage 2 adds BERT with fusion from layer 2, projections to 16, temp, VTM head)."""
    from vfm.models.bert import build_bert_fusion

    prefix = "encoder." if stage == 1 else "vision_encoder.encoder."
    decoder = "clip_decoder." if stage == 1 else "vision_encoder.clip_decoder."
    state = umt_state(prefix)
    for k in range(2):
        state |= {
            f"{decoder}{k}.head.weight": torch.randn(32, 64),
            f"{decoder}{k}.head.bias": torch.randn(32),
            f"{decoder}{k}.norm.weight": torch.randn(32),
            f"{decoder}{k}.norm.bias": torch.randn(32),
        }
    if stage == 2:
        bert = build_bert_fusion(UMT_BERT, fusion_layer=2, video_width=64)
        for module in bert.modules():  # every tensor random, so a wrong mapping cannot pass by chance
            for param in module.parameters(recurse=False):
                torch.nn.init.normal_(param)
        state |= {f"text_encoder.{k}": v.clone() for k, v in bert.state_dict().items()}
        state |= {
            "vision_encoder.pool_norm.weight": torch.randn(64),
            "vision_encoder.pool_norm.bias": torch.randn(64),
            "vision_proj.weight": torch.randn(16, 64),
            "vision_proj.bias": torch.randn(16),
            "text_proj.weight": torch.randn(16, 32),
            "text_proj.bias": torch.randn(16),
            "itm_head.weight": torch.randn(2, 32),
            "itm_head.bias": torch.randn(2),
            "temp": torch.tensor(0.05),
            "clip_teacher.conv1.weight": torch.randn(64, 3, 1, 8, 8),
            "clip_teacher.transformer.resblocks.0.attn.in_proj_weight": torch.randn(192, 64),
        }
        # the released BERT names (ALBEF's xbert = HF's), spelt out once
        assert state["text_encoder.bert.encoder.layer.2.crossattention.self.key.weight"].shape == (32, 64)
        assert "text_encoder.cls.predictions.transform.dense.weight" in state
        assert "text_encoder.bert.encoder.layer.1.crossattention.self.key.weight" not in state
    return state


@pytest.mark.parametrize("stage", [1, 2])
def test_released_umt_files_round_trip_strictly_through_the_umt_recipes(stage, umt_teacher_file, tmp_path):
    from vfm.models.convert_umt import export_umt
    from vfm.recipes.umt import UnmaskedTeacher
    from vfm.recipes.umt_multimodal import UnmaskedTeacherMultimodal

    released = released_umt(stage)
    path = tmp_path / f"umt_stage{stage}.pth"
    torch.save({"model": released}, path)  # the released files are wrapped
    converted = load_init_weights(path)
    assert converted.format == "umt"
    teacher = {
        "teacher": str(umt_teacher_file),
        "teacher_model": "vit-tiny-test",
        "align_layers": 2,
        "teacher_autocast": False,
    }
    if stage == 1:
        recipe = UnmaskedTeacher(student=UMT_STUDENT, **teacher)
    else:
        recipe = UnmaskedTeacherMultimodal(
            student=UMT_STUDENT, text_model=UMT_BERT, fusion_layer=2, embed_dim=16, **teacher
        )
    state = {k: v for k, v in converted.state.items() if k != "video.proj"}  # the stage-2 student has no proj
    report = load_weights(recipe, state, strict=True)  # every recipe tensor filled, every converted one used
    assert not report.missing and not report.unexpected
    skipped = set(converted.skipped)
    assert any(key.endswith("patch_embed.proj.bias") for key in skipped)
    teacher_keys = {k for k in released if k.startswith("clip_teacher.")}
    assert {k for k in skipped if k.startswith("clip_teacher.")} == teacher_keys
    exported = export_umt(recipe.state_dict(), stage)
    assert set(exported) == set(released) - skipped
    for key, value in exported.items():
        torch.testing.assert_close(value, released[key], msg=key)


def test_umt_import_into_a_mismatched_student_fails_loudly(umt_teacher_file):
    from vfm.recipes.umt import UnmaskedTeacher

    converted = convert_state_dict(released_umt(1))
    recipe = UnmaskedTeacher(
        student=UMT_STUDENT | {"width": 128, "heads": 2},
        teacher=str(umt_teacher_file),
        teacher_model="vit-tiny-test",
        align_layers=2,
        teacher_autocast=False,
    )
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(recipe, converted.state)
    with pytest.raises(RuntimeError, match="no tensor"):
        load_weights(recipe.video, converted.state)  # video.* names against the bare tower: nothing matches


def test_unknown_weights_are_a_clear_error():
    with pytest.raises(ValueError, match="unrecognised weights"):
        convert_state_dict({"backbone.layer1.weight": torch.zeros(1)})
