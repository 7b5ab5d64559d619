"""sctrvae: trVAE condition transfer on scvi-tools."""

# first: sets OMP_WAIT_POLICY before anything below loads torch
from . import _threads  # noqa: F401, I001
from . import benchmark, datasets, metrics, pl, tl
from ._checkpoint import TrainingCheckpoint
from ._data_splitter import ConditionBalancedDataLoader, ConditionBalancedDataSplitter
from ._device_data import DeviceResidentData
from ._ensemble import TRVAEEnsemble
from ._mmd import mmd, pairwise_condition_mmd
from ._model import TRVAEModel
from ._module import TRVAEModule
from ._sampler import ConditionBalancedSampler
from ._version import __version__

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
