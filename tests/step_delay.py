"""A callback for subprocess tests that need time to act between training steps (send a signal, kill)."""

import time

import lightning as L


class StepDelay(L.Callback):
    """Sleeps ``seconds`` after every training batch."""

    def __init__(self, seconds: float = 0.2) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(self.seconds)
