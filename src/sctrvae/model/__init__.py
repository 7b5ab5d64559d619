"""The user-facing models: AnnData in, AnnData and arrays out."""

from ._ensemble import TRVAEEnsemble
from ._trvae import TRVAEModel

__all__ = ["TRVAEEnsemble", "TRVAEModel"]
