import pytest
import torch
from torchmetrics.functional.retrieval import retrieval_hit_rate

from vfm.eval import caption_positives, chance_recall_at_1, retrieval_metrics, temporal_accuracy
from vfm.eval.retrieval import first_positive_rank


def test_identity_similarity_is_perfect():
    metrics = retrieval_metrics(torch.eye(5), torch.eye(5, dtype=torch.bool))
    assert metrics["t2v_r1"] == metrics["v2t_r1"] == 1.0 and metrics["t2v_median_rank"] == 1.0


def test_hit_rates_match_torchmetrics_per_query():
    torch.manual_seed(0)
    similarity = torch.randn(30, 30)
    captions = [f"caption {i % 20}" for i in range(30)]  # some captions repeat: several correct clips
    positives = caption_positives(captions, captions)
    metrics = retrieval_metrics(similarity, positives)
    for k in (1, 5, 10):
        expected = torch.stack([retrieval_hit_rate(similarity[q], positives[q], top_k=k) for q in range(30)]).mean()
        assert metrics[f"t2v_r{k}"] == pytest.approx(expected.item())
        expected_v2t = torch.stack(
            [retrieval_hit_rate(similarity[:, v], positives[:, v], top_k=k) for v in range(30)]
        ).mean()
        assert metrics[f"v2t_r{k}"] == pytest.approx(expected_v2t.item())


def test_rank_of_first_positive_and_median():
    similarity = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.2, 0.1], [0.0, 0.4, 0.8]])
    positives = torch.eye(3, dtype=torch.bool)
    assert first_positive_rank(similarity, positives).tolist() == [3, 2, 1]
    assert retrieval_metrics(similarity, positives)["t2v_median_rank"] == 2.0


def test_identical_captions_count_as_correct_and_chance():
    captions = ["a", "a", "b", "c"]
    positives = caption_positives(captions, captions)
    assert positives.sum().item() == 6
    similarity = torch.tensor([[0.0, 1.0, 0.5, 0.2]] * 4)  # every text ranks video 1 first
    metrics = retrieval_metrics(similarity, positives)
    assert metrics["t2v_r1"] == 0.5  # texts 0 and 1 ("a") are right
    assert chance_recall_at_1(positives) == pytest.approx((0.5 + 0.5 + 0.25 + 0.25) / 4)


def test_missing_positive_is_an_error():
    with pytest.raises(ValueError, match="at least one correct"):
        retrieval_metrics(torch.zeros(2, 2), torch.tensor([[True, False], [True, False]]))


def test_temporal_accuracy():
    video = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    text = video.clone()
    reverse_text = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # second one ties with the caption: counts wrong
    reversed_video = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    metrics = temporal_accuracy(video, text, reverse_text, reversed_video)
    assert metrics["temporal_text_acc"] == 0.5
    assert metrics["temporal_video_acc"] == 1.0
    assert metrics["temporal_acc"] == 0.75
