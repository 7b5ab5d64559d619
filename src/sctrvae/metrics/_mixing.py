"""How well the conditions mix in a representation, within groups of cells."""

from __future__ import annotations

import anndata as ad
import numpy as np
from numpy.typing import ArrayLike

from .._utils import MIXING_NEIGHBORS, mixing_score


def condition_mixing(
    data: ad.AnnData | ArrayLike,
    condition: str | ArrayLike,
    groups: str | ArrayLike | None = None,
    use_rep: str | None = None,
    n_neighbors: int = MIXING_NEIGHBORS,
) -> float:
    """Balanced accuracy of a kNN classifier recovering the condition within each group.

    For every cell of a group, its ``n_neighbors`` nearest cells of the same group (itself
    excluded) vote for their conditions; each vote is divided by the size of its condition in the
    group, so a condition is not predicted more often just because it has more cells. The score
    of a group is the balanced accuracy of these predictions (the mean over conditions of the
    fraction of its cells predicted correctly); the result is the mean over the groups that have
    at least two conditions with ``n_neighbors + 1`` cells each (others are skipped).

    ``1 / n_conditions`` (0.5 for two) means perfectly mixed: the representation does not tell
    the conditions apart within a group; ``1`` means fully separated. Use it on ``y``
    (``get_latent_representation(representation="y")``), where the MMD acts, or on ``z``.

    Parameters
    ----------
    data
        AnnData, or an array of shape ``(n_cells, n_features)``.
    condition, groups
        ``obs`` columns of ``data`` (AnnData) or per-cell arrays; ``groups=None``: one group.
    use_rep
        Key of ``data.obsm`` to use (AnnData only); ``None``: ``data.X``.
    n_neighbors
        Neighbours per cell.

    Returns
    -------
    The mean balanced accuracy over the scored groups; NaN when none qualifies.
    """
    if isinstance(data, ad.AnnData):
        obs = data.obs
        condition = obs[condition] if isinstance(condition, str) else condition
        groups = obs[groups] if isinstance(groups, str) else groups
        data = data.obsm[use_rep] if use_rep is not None else data.X
    elif use_rep is not None or isinstance(condition, str) or isinstance(groups, str):
        raise ValueError("use_rep and column names need an AnnData; pass arrays otherwise.")
    x = np.asarray(data.toarray() if hasattr(data, "toarray") else data)
    condition = np.asarray(condition).reshape(-1)
    groups = np.zeros(len(x), dtype=int) if groups is None else np.asarray(groups).reshape(-1)
    if not len(x) == condition.size == groups.size:
        raise ValueError("data, condition and groups must have one entry per cell.")
    if n_neighbors < 1:
        raise ValueError("n_neighbors must be positive.")
    return mixing_score(x, condition, groups, n_neighbors)
