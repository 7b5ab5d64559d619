"""Tools in scanpy's style: checks of transfer on your own groups, and hedged predictions."""

from .._utils import change_se, interval_se
from ._coverage import donor_coverage
from ._hedge import hedge, hedged_change_se, lending_weights
from ._similarity import group_changes, group_similarity
from ._transfer_check import transfer_check

__all__ = [
    "change_se",
    "donor_coverage",
    "group_changes",
    "group_similarity",
    "hedge",
    "hedged_change_se",
    "interval_se",
    "lending_weights",
    "transfer_check",
]
