"""sctrvae: trVAE condition transfer on scvi-tools."""

# first: sets OMP_WAIT_POLICY before anything below loads torch
from . import _threads  # noqa: F401, I001
from . import benchmark, datasets, metrics, pl, tl
from ._version import __version__
from .data import (
    ConditionBalancedDataLoader,
    ConditionBalancedDataSplitter,
    ConditionBalancedSampler,
    DeviceResidentData,
)
from .model import TRVAEEnsemble, TRVAEModel
from .module import TRVAEModule, mmd, pairwise_condition_mmd
from .train import TrainingCheckpoint

__all__ = [
    "ConditionBalancedDataLoader",
    "ConditionBalancedDataSplitter",
    "ConditionBalancedSampler",
    "DeviceResidentData",
    "TRVAEEnsemble",
    "TRVAEModel",
    "TRVAEModule",
    "TrainingCheckpoint",
    "__version__",
    "benchmark",
    "datasets",
    "metrics",
    "mmd",
    "pairwise_condition_mmd",
    "pl",
    "tl",
]
