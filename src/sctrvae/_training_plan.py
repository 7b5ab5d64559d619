"""scvi-tools' TrainingPlan, with metrics logged in a way Lightning's DDP sync accepts."""

from __future__ import annotations

import torch
from scvi.train import TrainingPlan


class TRVAETrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` whose metric logging also works under DDP.

    scvi-tools 1.4 logs its metrics under ``torch.inference_mode``; Lightning's DDP reduction
    later rescales the logged tensors in place outside that mode, which raises. Logging under
    ``torch.no_grad`` instead keeps them ordinary tensors; values are unchanged.
    """

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)
