"""The recipe MFU benchmark's registered recipes build and take a counted step (tiny sizes; never timed)."""

from __future__ import annotations

import functools

import pytest
import torch

from vfm.bench import recipe_mfu

TINY_STUDENT = {"patch_size": 8, "width": 32, "layers": 2, "heads": 2}
TINY_BERT = {
    "vocab_size": 128,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 64,
    "max_position_embeddings": 32,
}
TINY = {
    "umt": {"student": TINY_STUDENT, "teacher_model": "vit-tiny-test", "align_layers": 2},
    "umt_multimodal": {
        "student": TINY_STUDENT,
        "teacher_model": "vit-tiny-test",
        "align_layers": 2,
        "text_model": TINY_BERT,
        "fusion_layer": 1,
        "embed_dim": 16,
    },
}


def test_umt_stages_are_registered():
    assert {"long_video", "umt", "umt_multimodal"} <= set(recipe_mfu.RECIPES)


@pytest.mark.parametrize("name", sorted(TINY))
def test_umt_recipe_step_is_measured_with_its_teacher(name, monkeypatch):
    monkeypatch.setitem(recipe_mfu.RECIPES, name, functools.partial(recipe_mfu.RECIPES[name], **TINY[name]))
    step = recipe_mfu.RecipeStep(recipe_mfu.RECIPES[name], 2, 4, 32, torch.device("cpu"))
    assert step.recipe.align is not None and step.recipe.align.teacher.autocast  # the teacher as configured
    if name == "umt_multimodal":
        assert int(step.batch["text"].max()) < TINY_BERT["vocab_size"]  # BERT's ids, not CLIP's
    result = recipe_mfu.measure(name, torch.device("cpu"), batch_size=2, num_frames=4, size=32, repeats=1)
    assert result["model_flops_per_step"] > 0 and result["batch_size"] == 2
