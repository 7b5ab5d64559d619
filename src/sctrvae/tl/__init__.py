"""Tools in scanpy's style: checks of transfer on your own groups, and hedged predictions."""

from ._similarity import group_changes, group_similarity

__all__ = ["group_changes", "group_similarity"]
