"""Maximum mean discrepancy between the conditions of a minibatch.

The estimator is the biased (V-statistic) one: it is the squared RKHS distance between the two
empirical mean embeddings, hence never negative, unlike the unbiased U-statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: Multipliers of the median squared distance used by ``bandwidths="auto"``: seven scales, two
#: octaves either side of the median heuristic, so the kernel sees both local and global shifts.
AUTO_BANDWIDTH_MULTIPLIERS = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances, clamped at zero against rounding."""
    d2 = (
        a.pow(2).sum(-1, keepdim=True)
        + b.pow(2).sum(-1).unsqueeze(-2)
        - 2 * a @ b.transpose(-1, -2)
    )
    return d2.clamp_min(0.0)


def resolve_bandwidths(
    d2: torch.Tensor, bandwidths: str | Sequence[float], norms: torch.Tensor | None = None
) -> torch.Tensor:
    """Kernel bandwidths σ for ``k(a, b) = exp(-‖a - b‖² / (2σ))``.

    ``"auto"`` scales :data:`AUTO_BANDWIDTH_MULTIPLIERS` by half the (lower) median off-diagonal
    squared distance of the pooled sample (detached), which makes the penalty invariant to a global
    rescaling of the representation: the network cannot lower it by shrinking ``y``.

    ``norms`` (squared norms of the points, optional) set a floor of ``eps · mean(norms)``: a
    representation that has (nearly) collapsed has a median of zero, and smaller squared distances
    are rounding noise of :func:`squared_distances` anyway; without the floor the bandwidth would
    shrink to the smallest float and the gradients explode. The floor is scale-invariant too.
    """
    if isinstance(bandwidths, str):
        if bandwidths != "auto":
            raise ValueError(
                f"bandwidths must be 'auto' or a sequence of floats, got {bandwidths!r}."
            )
        n = d2.shape[0]
        off_diagonal = d2.detach()[~torch.eye(n, dtype=torch.bool, device=d2.device)]
        median = off_diagonal.median() if off_diagonal.numel() > 0 else d2.new_tensor(1.0)
        finfo = torch.finfo(d2.dtype)
        # sqrt(tiny) keeps 1 / (2σ) finite when every point is identical (all-zero y)
        floor = d2.new_tensor(finfo.tiny**0.5)
        if norms is not None and norms.numel() > 0:
            floor = torch.maximum(floor, finfo.eps * norms.detach().mean())
        scale = torch.maximum(median / 2, floor)
        return scale * d2.new_tensor(AUTO_BANDWIDTH_MULTIPLIERS)
    sigma = torch.as_tensor(list(bandwidths), dtype=d2.dtype, device=d2.device)
    if sigma.numel() == 0 or bool((sigma <= 0).any()):
        raise ValueError("Kernel bandwidths must be a non-empty sequence of positive floats.")
    return sigma


def multiscale_rbf_kernel(d2: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Mean over bandwidths of ``exp(-d2 / (2σ))``: averaged, not summed, so weights carry over."""
    return torch.exp(-d2.unsqueeze(0) / (2 * sigma.view(-1, 1, 1))).mean(0)


def mmd(
    x: torch.Tensor, y: torch.Tensor, bandwidths: str | Sequence[float] = "auto"
) -> torch.Tensor:
    """Biased MMD² between two samples ``x`` (n, d) and ``y`` (m, d)."""
    codes = torch.cat(
        [x.new_zeros(x.shape[0], dtype=torch.long), x.new_ones(y.shape[0], dtype=torch.long)]
    )
    return pairwise_condition_mmd(torch.cat([x, y]), codes, bandwidths)


def pairwise_condition_mmd(
    y: torch.Tensor,
    condition: torch.Tensor,
    bandwidths: str | Sequence[float] = "auto",
    min_cells: int = 2,
) -> torch.Tensor:
    """Mean biased MMD² over all pairs of conditions present in a minibatch.

    Parameters
    ----------
    y
        Representation of shape ``(n_cells, n_features)``.
    condition
        Integer condition codes of shape ``(n_cells,)`` or ``(n_cells, 1)``.
    bandwidths
        ``"auto"`` (median heuristic, see :func:`resolve_bandwidths`) or fixed σ values.
    min_cells
        Conditions with fewer cells than this in the minibatch are skipped: one cell gives no
        estimate of a distribution and would add noise (or NaN from empty means).

    Returns
    -------
    A 0-d tensor; zero when fewer than two conditions have ``min_cells`` cells.
    """
    condition = condition.reshape(-1).long()
    present, inverse, counts = torch.unique(condition, return_inverse=True, return_counts=True)
    keep = counts >= min_cells
    if int(keep.sum()) < 2:
        return y.new_zeros(())
    one_hot = torch.nn.functional.one_hot(inverse, num_classes=present.numel()).to(y.dtype)[:, keep]
    rows = one_hot.sum(1) > 0
    y, one_hot, counts = y[rows], one_hot[rows], counts[keep].to(y.dtype)
    d2 = squared_distances(y, y)
    sigma = resolve_bandwidths(d2, bandwidths, norms=y.pow(2).sum(-1))
    kernel = multiscale_rbf_kernel(d2, sigma)
    # block means of the kernel matrix: means[i, j] = mean of k(a, b), a in condition i, b in j
    means = (one_hot.T @ kernel @ one_hot) / (counts[:, None] * counts[None, :])
    within = torch.diagonal(means)
    pair_mmd = within[:, None] + within[None, :] - 2 * means
    i, j = torch.triu_indices(counts.numel(), counts.numel(), offset=1, device=y.device)
    return pair_mmd[i, j].clamp_min(0.0).mean()
