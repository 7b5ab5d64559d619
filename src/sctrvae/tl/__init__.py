"""Tools in scanpy's style: checks of transfer on your own groups, and hedged predictions."""

from ._hedge import change_se, donor_shares, hedge
from ._similarity import group_changes, group_similarity
from ._transfer_check import transfer_check

__all__ = [
    "change_se",
    "donor_shares",
    "group_changes",
    "group_similarity",
    "hedge",
    "transfer_check",
]
