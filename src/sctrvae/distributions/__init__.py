"""The negative binomial of the decoder: a cheaper log-likelihood and cheaper draws on CPU."""

from ._nb_sampling import sample_negative_binomial
from ._negative_binomial import SparseNegativeBinomial

__all__ = ["SparseNegativeBinomial", "sample_negative_binomial"]
