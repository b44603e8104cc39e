"""The cached-feature linear probe: the classifier it fits, and its weight-decay choice on held-out training clips."""

import pytest
import torch

from vfm.eval.linear_probe import (
    ProbeSettings,
    _probe_arguments,
    accuracy,
    choose_weight_decay,
    extract_features,
    fit_linear_head,
    fit_linear_heads,
)

SETTINGS = ProbeSettings(epochs=30, batch_size=64)


def clusters(
    n: int, classes: int = 4, dim: int = 16, seed: int = 0, scaled: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class clusters, by default on badly scaled, offset features (what standardisation must undo)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    labels = torch.randint(classes, (n,), generator=generator)
    features = centres[labels] + torch.randn(n, dim, generator=generator)
    return (features * torch.logspace(-3, 3, dim) + 50.0 if scaled else features), labels


def test_head_separates_clusters_on_raw_features():
    x, y = clusters(400)
    head = fit_linear_head(x, y, 4, 0.0, SETTINGS)
    test_x, test_y = clusters(200, seed=1)
    assert accuracy(head(test_x), test_y) > 0.95  # the standardisation is folded into the returned layer


def test_head_is_the_same_classifier_under_any_per_feature_scale_and_shift():
    x, y = clusters(300, scaled=False)
    test_x, _ = clusters(100, seed=1, scaled=False)
    scale, shift = torch.logspace(-1, 1, x.shape[1]), torch.linspace(-10, 10, x.shape[1])
    plain = fit_linear_head(x, y, 4, 0.1, SETTINGS)(test_x)
    moved = fit_linear_head(x * scale + shift, y, 4, 0.1, SETTINGS)(test_x * scale + shift)
    torch.testing.assert_close(moved, plain, atol=1e-3, rtol=1e-3)  # standardised inside, folded back out


def test_heads_fitted_together_equal_separate_fits():
    x, y = clusters(300)
    y[::3] = torch.randint(4, (100,), generator=torch.Generator().manual_seed(2))
    decays = (0.0, 1.0, 10.0)
    together = fit_linear_heads(x, y, 4, decays, SETTINGS)
    for decay, head in zip(decays, together):
        alone = fit_linear_head(x, y, 4, decay, SETTINGS)
        torch.testing.assert_close(head.weight, alone.weight, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(head.bias, alone.bias, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(together[0].weight, together[2].weight)  # the decays did act


def test_constant_features_are_left_unscaled():
    x, y = clusters(200)
    x[:, 0] = 7.0  # zero spread: dividing by it would blow the logits up
    head = fit_linear_head(x, y, 4, 0.0, SETTINGS)
    test_x, test_y = clusters(100, seed=1)
    test_x[:, 0] = 7.0
    assert torch.isfinite(head.weight).all() and accuracy(head(test_x), test_y) > 0.9


def test_head_on_random_labels_stays_near_chance():
    x, _ = clusters(400)
    y = torch.randint(4, (400,), generator=torch.Generator().manual_seed(5))
    head = fit_linear_head(x, y, 4, 0.0, SETTINGS)
    test_x, _ = clusters(400, seed=1)
    test_y = torch.randint(4, (400,), generator=torch.Generator().manual_seed(6))
    assert accuracy(head(test_x), test_y) < 0.35


def test_weight_decay_is_chosen_on_held_out_training_features():
    x, y = clusters(300)
    y[::2] = torch.randint(4, (150,), generator=torch.Generator().manual_seed(7))  # half the labels are noise
    decay, scores = choose_weight_decay(x, y, 4, ProbeSettings(epochs=30, weight_decays=(0.0, 1.0, 100.0)))
    assert set(scores) == {0.0, 1.0, 100.0} and scores[decay] == max(scores.values())
    assert all(0.5 < score < 1.0 for score in scores.values())  # held-out noisy labels: never all right
    assert decay == min(d for d, score in scores.items() if score == scores[decay])  # ties go to the least decay


def test_extract_features_prepares_every_batch():
    loader = [{"video": torch.full((2, 3), float(i)), "label": torch.tensor([i, i])} for i in range(3)]
    shift = lambda batch: batch | {"video": batch["video"] + 1}  # noqa: E731
    features, labels = extract_features(lambda video: video.sum(1, keepdim=True), loader, shift)
    assert features.squeeze(1).tolist() == [3.0, 3.0, 6.0, 6.0, 9.0, 9.0] and labels.tolist() == [0, 0, 1, 1, 2, 2]


def test_extract_features_of_an_empty_loader_says_so():
    with pytest.raises(ValueError, match="no batches"):
        extract_features(lambda v: v, [])


def test_multi_view_batches_average_their_views():
    video = torch.arange(12.0).view(2, 3, 2)  # 2 clips x 3 views, features_fn is the identity on [B, 2]
    loader = [{"video": video.view(2, 3, 2, 1, 1, 1), "label": torch.tensor([0, 1])}]
    features, _ = extract_features(lambda v: v.flatten(1), loader)
    torch.testing.assert_close(features, video.mean(1))


def test_probe_arguments_set_the_settings_and_leave_the_rest():
    rest, settings = _probe_arguments(["--config", "a.yaml", "--probe.epochs", "7", "--probe.lr=0.5"], ProbeSettings())
    assert rest == ["--config", "a.yaml"] and settings.epochs == 7 and settings.lr == 0.5
    with pytest.raises(ValueError, match="unknown probe setting 'epoch'"):
        _probe_arguments(["--probe.epoch=3"], ProbeSettings())
