"""The long-video screening loop: frames spread like the datamodule's `rand` sampling, and the scores it reports."""

import torch

from vfm.bench.long_video_screen import FRAMES, evaluate, spread_frames
from vfm.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

SWAPPED = 1000  # token ids >= 1000 stand for event-swapped captions


class OneHotModel:
    """Clip i embeds as e_i (-e_i played backwards); caption i as e_match[i]; swapped caption i as -e_i."""

    def __init__(self, match: list[int]) -> None:
        self.match, self.training = torch.tensor(match), True

    def eval(self):
        self.training = False
        return self

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        mean, std = torch.tensor(OPENAI_CLIP_MEAN), torch.tensor(OPENAI_CLIP_STD)
        pixels = ((video[..., 0, 0] * std + mean) * 255).round().long()  # [B, T, 3]: clip id, frame index
        ids, forward = pixels[:, 0, 0], pixels[:, -1, 1] > pixels[:, 0, 1]
        eye = torch.eye(len(self.match))[ids]
        return torch.where(forward[:, None], eye, -eye)

    def encode_text(self, text: torch.Tensor, mask) -> torch.Tensor:
        token, eye = text[:, 0], torch.eye(len(self.match))
        return torch.where((token >= SWAPPED)[:, None], -eye[token % SWAPPED], eye[self.match[token % SWAPPED]])


def test_spread_frames_take_one_frame_from_each_part():
    middle = spread_frames(16)
    assert middle.tolist() == [4 + 8 * i for i in range(16)]
    drawn = spread_frames(16, torch.Generator().manual_seed(0))
    assert ((drawn >= 8 * torch.arange(16)) & (drawn < 8 * torch.arange(1, 17))).all()
    assert spread_frames(FRAMES).tolist() == list(range(FRAMES))


def test_recall_is_scored_within_groups_of_40_and_order_both_ways():
    n = 80
    video = torch.zeros(n, FRAMES, 3, 2, 2, dtype=torch.uint8)
    video[:, :, 0] = torch.arange(n, dtype=torch.uint8)[:, None, None, None]  # channel 0: the clip's id
    video[:, :, 1] = torch.arange(FRAMES, dtype=torch.uint8)[None, :, None, None]  # channel 1: the frame's index
    text = torch.arange(n)[:, None]
    val = {"video": video, "text": text, "text_mask": torch.ones_like(text), "swapped_text": SWAPPED + text}
    val["swapped_text_mask"] = val["text_mask"]
    val["caption"] = [f"caption {i}" for i in range(n)]
    match = list(range(n))
    match[0] = 1  # caption 0 scores clip 1 highest: one miss in the first group of 40, none in the second
    model = OneHotModel(match)
    metrics = evaluate(model, val, spread_frames(16))
    assert metrics["r1_first40"] == 0.975
    assert metrics["r1_40"] == round((0.975 + 1.0) / 2, 3)
    assert metrics["temporal_text_acc"] == 1.0  # every clip prefers its caption to the swapped one
    assert metrics["temporal_video_acc"] == round(79 / 80, 3)  # caption 0 matches neither clip 0 nor it reversed
    assert model.training  # evaluation leaves the model as it found it
