"""Which training groups a group looks like, in the model's latent space."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors


def donor_coverage(
    query: np.ndarray, reference: np.ndarray, reference_groups: np.ndarray, n_neighbors: int = 30
) -> pd.Series:
    """How far each reference group covers the query cells: 1 where they mix, 0 where apart.

    The query cells' ``n_neighbors`` nearest neighbours are taken among the query's own cells
    (itself excluded) and the reference; a group's share of them is divided by the share it
    would have if it and the query were one well-mixed population (``n_g / (n_query + n_g)``),
    and clipped at 1. A query far from every group finds its own cells and covers nothing: the
    model then answers from what it learned across groups, not from one look-alike.
    """
    points = np.vstack([query, reference])
    labels = np.concatenate([np.full(len(query), None, dtype=object), reference_groups])
    k = min(n_neighbors, len(points) - 1)
    _, idx = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(query)
    neighbours = pd.Series(labels[idx[:, 1:]].ravel()).dropna()
    share = neighbours.value_counts() / idx[:, 1:].size
    sizes = pd.Series(reference_groups).value_counts()
    expected = sizes / (len(query) + sizes)
    return (share.reindex(sizes.index, fill_value=0.0) / expected).clip(upper=1.0)
