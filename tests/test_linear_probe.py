"""The cached-feature linear probe: the classifier it fits, and its weight-decay choice on held-out training clips."""

import pytest
import torch

from vfm.eval.linear_probe import ProbeSettings, accuracy, choose_weight_decay, extract_features, fit_linear_head

SETTINGS = ProbeSettings(epochs=30, batch_size=64)


def clusters(n: int, classes: int = 4, dim: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Class clusters on badly scaled, offset features (what standardisation must undo)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    labels = torch.randint(classes, (n,), generator=generator)
    features = centres[labels] + torch.randn(n, dim, generator=generator)
    return features * torch.logspace(-3, 3, dim) + 50.0, labels


def test_head_separates_clusters_on_raw_features():
    x, y = clusters(400)
    head = fit_linear_head(x, y, 4, 0.0, SETTINGS)
    test_x, test_y = clusters(200, seed=1)
    assert accuracy(head(test_x), test_y) > 0.95  # the standardisation is folded into the returned layer


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
