"""The time-order screening loop scores retrieval as the recipe does: clips sharing a caption are all correct."""

import torch

from vfm.bench.time_order import evaluate

REVERSED = 100  # token ids >= 100 stand for time-reversed captions


class OneHotModel:
    """Clip i embeds as e_i (-e_i played backwards); caption i as e_match[i]; reversed caption i as -e_i."""

    def __init__(self, match: list[int]) -> None:
        self.match = torch.tensor(match)

    def eval(self):
        return self

    def train(self):
        return self

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        forward = (video[:, -1] - video[:, 0]).mean() > 0  # the frames brighten over time unless reversed
        eye = torch.eye(len(self.match))
        return eye if forward else -eye

    def encode_text(self, text: torch.Tensor, mask) -> torch.Tensor:
        token, eye = text[:, 0], torch.eye(len(self.match))
        return torch.where((token >= REVERSED)[:, None], -eye[token % REVERSED], eye[self.match[token % REVERSED]])


def test_duplicate_captions_count_as_correct_and_order_is_scored():
    val = {
        "video": torch.arange(4.0)[None, :, None, None, None].expand(4, 4, 3, 2, 2).clone(),
        "text": torch.arange(4)[:, None],
        "reverse_text": REVERSED + torch.arange(4)[:, None],
        "caption": ["a", "a", "b", "c"],
    }
    # caption 0 scores clip 1 highest: right, since clip 1 has the same caption (index matching would say wrong)
    metrics = evaluate(OneHotModel(match=[1, 1, 2, 3]), val, batch_size=4)
    assert metrics["t2v_r1"] == 1.0
    assert metrics["temporal_text_acc"] == 1.0  # every clip prefers its caption to the reversed one
    assert metrics["temporal_video_acc"] == 0.75  # caption 0 matches neither clip 0 nor clip 0 reversed
