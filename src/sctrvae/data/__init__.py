"""Registered data: condition-balanced minibatches, the split, the device copy, covariates."""

from ._data_splitter import ConditionBalancedDataLoader, ConditionBalancedDataSplitter
from ._device_data import DeviceResidentData
from ._sampler import ConditionBalancedSampler

__all__ = [
    "ConditionBalancedDataLoader",
    "ConditionBalancedDataSplitter",
    "ConditionBalancedSampler",
    "DeviceResidentData",
]
