"""The tensors-only network: encoder, decoder, likelihood and the MMD between conditions."""

from ._mmd import mmd, pairwise_condition_mmd
from ._trvae import TRVAEModule

__all__ = ["TRVAEModule", "mmd", "pairwise_condition_mmd"]
