"""Video ViT: equivalence with open_clip's image tower, shapes, token dropping, the backbone API, loading."""

from __future__ import annotations

import warnings

import open_clip
import pytest
import torch

from vfm.models import (
    VideoViT,
    create_towers,
    create_video_vit,
    load_weights,
    read_state_dict,
    tube_keep_indices,
)
from vfm.models.factory import create_clip

MODEL = "vit-tiny-test"  # 32 px, patch 8 (16 patches), width 64, 2 layers


@pytest.fixture(scope="module")
def clip() -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return create_clip(MODEL).eval()


def static_clip(image: torch.Tensor, num_frames: int) -> torch.Tensor:
    return image[:, None].expand(-1, num_frames, -1, -1, -1).contiguous()


@pytest.mark.parametrize("num_frames", [1, 4])
@pytest.mark.parametrize(
    "options",
    [{"attention": "joint", "cls_key_bias": True}, {"attention": "frame"}, {"attention": "factorized"}],
    ids=["joint", "frame", "factorized"],
)
def test_static_clip_equals_open_clip_image_embedding(clip, num_frames, options):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=8, **options).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = clip.encode_image(image)
        actual = video_vit(static_clip(image, num_frames))
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=0)


def test_joint_attention_without_cls_bias_is_exact_only_for_one_frame(clip):
    # a single CLS key among T duplicated frames gets 1/T of its image share of attention
    video_vit = VideoViT.from_open_clip(clip.visual).eval()
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = clip.encode_image(image)
        torch.testing.assert_close(video_vit(static_clip(image, 1)), expected, atol=1e-4, rtol=0)
        assert (video_vit(static_clip(image, 4)) - expected).abs().max() > 1e-3


def test_layer_scale_and_quick_gelu_tower_matches_open_clip():
    clip = open_clip.create_model("vit-tiny-test-quickgelu", pretrained=None).eval()
    video_vit = VideoViT.from_open_clip(clip.visual, attention="frame").eval()
    assert video_vit.blocks[0].ls_1.gamma.shape == (64,)
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(video_vit(static_clip(image, 3)), clip.encode_image(image), atol=1e-4, rtol=0)


@pytest.mark.parametrize("attention", ["joint", "factorized", "frame"])
@pytest.mark.parametrize("num_frames", [1, 3, 8])
def test_token_shapes_and_dropped_counts(clip, attention, num_frames):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=4, attention=attention)
    video = torch.randn(2, num_frames, 3, 32, 32)
    assert video_vit.forward_features(video).shape == (2, 1 + num_frames * 16, 64)
    keep = tube_keep_indices(2, num_frames, 16, drop_ratio=0.75)
    assert video_vit.forward_features(video, keep).shape == (2, 1 + num_frames * 4, 64)
    assert video_vit(video, keep).shape == (2, 32)


def test_training_mode_drops_tokens_and_eval_mode_does_not(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, drop_ratio=0.75, drop_mode="random")
    video = torch.randn(2, 4, 3, 32, 32)
    assert video_vit.train().forward_features(video).shape[1] == 1 + 16
    assert video_vit.eval().forward_features(video).shape[1] == 1 + 64


def test_random_drop_is_rejected_by_frame_wise_attention(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, attention="frame")
    keep = torch.tensor([[0, 1, 2, 3, 4, 20]])  # 5 tokens from frame 0, 1 from frame 1
    with pytest.raises(ValueError, match="same number of kept tokens"):
        video_vit.forward_features(torch.randn(1, 2, 3, 32, 32), keep)


def test_other_image_sizes_and_frame_counts_interpolate(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=8)
    with torch.no_grad():
        video_vit.temporal_embedding.normal_()
    tokens = video_vit.forward_features(torch.randn(1, 5, 3, 48, 64))
    assert tokens.shape == (1, 1 + 5 * 6 * 8, 64)


def test_gradients_reach_temporal_embedding_and_only_kept_tokens_cost(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=4, drop_path_rate=0.1).train()
    video = torch.randn(2, 4, 3, 32, 32)
    video_vit(video).sum().backward()
    assert video_vit.temporal_embedding.grad.abs().sum() > 0
    assert video_vit.conv1.weight.grad.abs().sum() > 0


def test_sincos_student_without_cls_token():
    student = VideoViT(
        image_size=32,
        patch_size=8,
        width=64,
        layers=2,
        heads=4,
        output_dim=None,
        cls_token=False,
        pos_embed="sincos",
        pool="mean",
        drop_path_rate=0.1,
    )
    assert not any("positional" in name or "temporal" in name for name, _ in student.named_parameters())
    keep = tube_keep_indices(2, 6, 16, drop_ratio=0.8)
    tokens = student.forward_features(torch.randn(2, 6, 3, 32, 32), keep)
    assert tokens.shape == (2, 6 * 3, 64)
    assert student.forward_head(tokens).shape == (2, 64)


def test_forward_intermediates_match_forward_features(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, attention="frame").eval()
    video = torch.randn(2, 3, 3, 32, 32)
    final, intermediates = video_vit.forward_intermediates(video, indices=2)
    assert len(intermediates) == 2 and intermediates[0].shape == final.shape
    torch.testing.assert_close(intermediates[-1], final)
    torch.testing.assert_close(final, video_vit.forward_features(video))
    only = video_vit.forward_intermediates(video, indices=[0], norm=True, intermediates_only=True)
    torch.testing.assert_close(only[0], video_vit.ln_post(intermediates[0]))


def test_gradient_checkpointing_gives_the_same_gradients(clip):
    video = torch.randn(2, 2, 3, 32, 32)
    grads = []
    for enable in (False, True):
        video_vit = VideoViT.from_open_clip(clip.visual, attention="factorized")
        video_vit.set_grad_checkpointing(enable)
        video_vit(video).square().sum().backward()
        grads.append(video_vit.blocks[0].attn.in_proj_weight.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_mean_pooling_and_no_weight_decay(clip):
    video_vit = VideoViT.from_open_clip(clip.visual, pool="mean")
    names = dict(video_vit.named_parameters())
    assert video_vit.no_weight_decay() <= set(names)
    assert video_vit(torch.randn(1, 2, 3, 32, 32)).shape == (1, 32)


def test_last_cls_attention_is_a_distribution_per_frame(clip):
    teacher = VideoViT.from_open_clip(clip.visual, attention="frame").eval()
    weights = teacher.last_cls_attention(torch.randn(2, 3, 3, 32, 32))
    assert weights.shape == (2, 3, 16)
    assert (weights > 0).all() and (weights.sum(-1) < 1).all()


@pytest.mark.parametrize(
    ("suffix", "wrapper"),
    [
        (".bin", "plain"),
        (".pt", "state_dict"),
        (".pth", "model"),
        (".pt", "module."),
        (".safetensors", "plain"),
    ],
)
def test_loads_local_open_clip_checkpoint(tmp_path, clip, suffix, wrapper):
    state = clip.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif wrapper == "module.":  # saved from a DDP-wrapped model
        torch.save({f"module.{k}": v for k, v in state.items()}, path)
    else:
        torch.save(state if wrapper == "plain" else {wrapper: state, "epoch": 3}, path)
    video_vit, text = create_towers(MODEL, pretrained=path, num_frames=4)
    image, tokens = torch.randn(1, 3, 32, 32), torch.randint(1, 49406, (1, 32))
    with torch.no_grad():
        expected = clip.encode_image(image)
        torch.testing.assert_close(video_vit.eval()(static_clip(image, 1)), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(text.eval()(tokens).embedding, clip.encode_text(tokens), atol=1e-5, rtol=0)


def test_missing_pretrained_warns_and_foreign_file_fails_loudly(tmp_path):
    with pytest.warns(UserWarning, match="randomly initialised"):
        create_video_vit(MODEL)
    path = tmp_path / "foreign.pt"
    torch.save({"model": {"encoder.blocks.0.attn.qkv.weight": torch.zeros(3)}}, path)
    assert list(read_state_dict(path)) == ["encoder.blocks.0.attn.qkv.weight"]
    with pytest.raises(RuntimeError, match="no tensor"):
        create_video_vit(MODEL, pretrained=path)
    with pytest.raises(FileNotFoundError):
        load_weights(torch.nn.Linear(2, 2), tmp_path / "absent.bin")


@pytest.mark.parametrize("options", [{"cls_key_bias": True}, {"attention": "factorized"}], ids=["joint", "fact"])
def test_bf16_autocast_training_step(clip, options):
    video_vit = VideoViT.from_open_clip(clip.visual, drop_ratio=0.5, drop_mode="tube", **options).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding = video_vit(torch.randn(2, 4, 3, 32, 32))
    embedding.float().square().mean().backward()
    assert embedding.shape == (2, 32) and torch.isfinite(video_vit.conv1.weight.grad).all()


@pytest.mark.parametrize("size", [(32, 32), (36, 44)], ids=["square", "not-a-patch-multiple"])
def test_embedding_only_kept_patches_equals_embedding_all_then_gathering(clip, size):
    video_vit = VideoViT.from_open_clip(clip.visual, num_frames=3, attention="frame").train()
    with torch.no_grad():
        video_vit.temporal_embedding.normal_()
    video = torch.randn(2, 3, 3, *size, requires_grad=True)
    patches = (size[0] // 8) * (size[1] // 8)
    keep = tube_keep_indices(2, 3, patches, 0.5)
    kept = video_vit.embed(video, keep)
    everything = video_vit.embed(video, sample=False)  # no keep: the convolution over every patch
    cls, tokens = everything[:, :1], everything[:, 1:]
    gathered = torch.cat([cls, tokens.gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))], 1)
    # ln_pre normalises each token on its own, so gathering after it is the same as before it
    torch.testing.assert_close(kept, gathered, atol=1e-5, rtol=1e-5)
    (grad_kept,) = torch.autograd.grad(kept.square().sum(), video_vit.conv1.weight)
    (grad_all,) = torch.autograd.grad(gathered.square().sum(), video_vit.conv1.weight)
    torch.testing.assert_close(grad_kept, grad_all, atol=1e-4, rtol=1e-4)
