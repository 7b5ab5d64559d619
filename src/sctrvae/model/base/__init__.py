"""The mixins :class:`~sctrvae.TRVAEModel` is assembled from, one concern each."""

from ._differential_mixin import DifferentialResponseMixin
from ._input_mixin import InputMixin
from ._latent_mixin import LatentMixin
from ._prediction_mixin import PredictionMixin
from ._training_mixin import TrainingMixin

__all__ = [
    "DifferentialResponseMixin",
    "InputMixin",
    "LatentMixin",
    "PredictionMixin",
    "TrainingMixin",
]
