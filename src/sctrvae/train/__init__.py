"""Training: the plan (loss bookkeeping, optimiser, schedule), its defaults and callbacks."""

from ._callbacks import RestoreBestWeights, StopOnNonFiniteLoss
from ._checkpoint import TrainingCheckpoint
from ._training_plan import TRVAETrainingPlan
from ._training_settings import TrainingSettings, step_budget, steps_per_epoch, training_settings

__all__ = [
    "RestoreBestWeights",
    "StopOnNonFiniteLoss",
    "TRVAETrainingPlan",
    "TrainingCheckpoint",
    "TrainingSettings",
    "step_budget",
    "steps_per_epoch",
    "training_settings",
]
