"""Tools in scanpy's style: checks of transfer on your own groups, and hedged predictions."""

from ._hedge import donor_shares, hedge
from ._similarity import group_changes, group_similarity
from ._transfer_check import transfer_check

__all__ = ["donor_shares", "group_changes", "group_similarity", "hedge", "transfer_check"]
