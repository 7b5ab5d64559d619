"""Maximum mean discrepancy between the conditions of a minibatch.

The estimator is the biased (V-statistic) one: it is the squared RKHS distance between the two
empirical mean embeddings, hence never negative, unlike the unbiased U-statistic.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .._constants import MMD_MODES, MMDMode

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
    d2: torch.Tensor,
    bandwidths: str | Sequence[float],
    norms: torch.Tensor | None = None,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Kernel bandwidths σ for ``k(a, b) = exp(-‖a - b‖² / (2σ))``.

    ``"auto"`` scales :data:`AUTO_BANDWIDTH_MULTIPLIERS` by half the (lower) median off-diagonal
    squared distance of the pooled sample (detached), which makes the penalty invariant to a global
    rescaling of the representation: the network cannot lower it by shrinking ``y``.

    ``norms`` (squared norms of the points, optional) set a floor of ``eps · mean(norms)``: a
    representation that has (nearly) collapsed has a median of zero, and smaller squared distances
    are rounding noise of :func:`squared_distances` anyway; without the floor the bandwidth would
    shrink to the smallest float and the gradients explode. The floor is scale-invariant too.

    ``rows`` (boolean, optional) restricts the pooled sample to those points, by masking rather
    than indexing, so the shapes do not depend on the data (no host-device synchronisation).
    """
    if isinstance(bandwidths, str):
        if bandwidths != "auto":
            raise ValueError(
                f"bandwidths must be 'auto' or a sequence of floats, got {bandwidths!r}."
            )
        n = d2.shape[0]
        if rows is None:
            rows = torch.ones(n, dtype=torch.bool, device=d2.device)
        pairs = rows[:, None] & rows[None, :] & ~torch.eye(n, dtype=torch.bool, device=d2.device)
        # lower median of the selected entries as the median of all n² entries: the others are
        # set to -inf or +inf, as many below as make the middles coincide (fixed shape, no sort)
        selected = pairs.reshape(-1)
        n_pairs = selected.sum()
        n_below = (selected.numel() - 1) // 2 - (n_pairs - 1) // 2
        below = ~selected & (torch.cumsum(~selected, 0) <= n_below)
        filler = torch.where(below, -torch.inf, torch.inf).to(d2.dtype)
        middle = torch.where(selected, d2.detach().reshape(-1), filler).median()
        median = torch.where(n_pairs > 0, middle, d2.new_tensor(1.0))
        finfo = torch.finfo(d2.dtype)
        # sqrt(tiny) keeps 1 / (2σ) finite when every point is identical (all-zero y)
        floor = d2.new_tensor(finfo.tiny**0.5)
        if norms is not None:
            mean_norm = (norms.detach() * rows).sum() / rows.sum().clamp_min(1)
            floor = torch.maximum(floor, finfo.eps * mean_norm)
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
    return pairwise_condition_mmd(torch.cat([x, y]), codes, bandwidths, n_conditions=2)


def check_mmd_mode(mode: str, has_labels: bool) -> None:
    """Raise unless ``mode`` is an MMD mode that the registered data can serve."""
    if mode not in MMD_MODES:
        raise ValueError(f"mmd_mode must be one of {list(MMD_MODES)}, got {mode!r}.")
    if mode != "global" and not has_labels:
        raise ValueError(
            f"mmd_mode={mode!r} compares cells of the same label and needs the label of every "
            "cell: register them with setup_anndata(..., labels_key=...), or use "
            "mmd_mode='global'."
        )


def pairwise_condition_mmd(
    y: torch.Tensor,
    condition: torch.Tensor,
    bandwidths: str | Sequence[float] = "auto",
    min_cells: int = 2,
    n_conditions: int | None = None,
    labels: torch.Tensor | None = None,
    n_labels: int | None = None,
    mode: MMDMode = "global",
) -> torch.Tensor:
    """Mean biased MMD² over pairs of conditions (or of label-matched blocks) in a minibatch.

    ``mode`` says what is compared:

    - ``"global"``: all cells of condition ``i`` against all cells of condition ``j``, for every
      pair of conditions with at least ``min_cells`` cells each.
    - ``"label"``: within each label (cell type), its cells in condition ``i`` against its cells
      in condition ``j``, for every (label, condition pair) block with ``min_cells`` cells on
      both sides; a label present in one condition only never enters the penalty.
    - ``"reweighted"``: condition ``i`` against condition ``j`` with cells weighted so that both
      have the same label proportions (the mean of the two conditions' proportions), over the
      labels with ``min_cells`` cells in both; other labels get zero weight.

    The value is the mean over the compared pairs (blocks). Everything is computed with masks
    and weights of fixed shape, so no step waits for the device (no data-dependent shapes).

    Parameters
    ----------
    y
        Representation of shape ``(n_cells, n_features)``.
    condition
        Integer condition codes of shape ``(n_cells,)`` or ``(n_cells, 1)``.
    bandwidths
        ``"auto"`` (median heuristic over the cells that take part, see
        :func:`resolve_bandwidths`) or fixed σ values.
    min_cells
        Groups with fewer cells than this in the minibatch get zero weight: one cell gives no
        estimate of a distribution and would add noise (or NaN from empty means).
    n_conditions, n_labels
        Number of condition (label) codes; default: the largest code plus one, which reads it
        from the device once. Modules pass them.
    labels
        Integer label codes like ``condition``; needed by ``"label"`` and ``"reweighted"``.
    mode
        ``"global"``, ``"label"`` or ``"reweighted"``.

    Returns
    -------
    A 0-d tensor; zero when no pair (block) has ``min_cells`` cells on both sides.
    """
    check_mmd_mode(mode, has_labels=mode == "global" or labels is not None)
    condition = condition.reshape(-1).long()
    n_conditions = n_conditions or int(condition.max()) + 1
    one_hot = torch.nn.functional.one_hot(condition, n_conditions).to(y.dtype)
    i, j = torch.triu_indices(n_conditions, n_conditions, offset=1, device=y.device)
    if mode == "global":
        counts = one_hot.sum(0)
        valid = (counts[i] >= min_cells) & (counts[j] >= min_cells)
        return _block_mmd(y, one_hot, i, j, valid, bandwidths)
    labels = labels.reshape(-1).long()
    n_labels = n_labels or int(labels.max()) + 1
    # (cells, labels, conditions) membership and its counts
    label_hot = torch.nn.functional.one_hot(labels, n_labels).to(y.dtype)
    member = label_hot[:, :, None] * one_hot[:, None]
    counts = member.sum(0)
    shared = (counts[:, i] >= min_cells) & (counts[:, j] >= min_cells)  # (labels, pairs)
    if mode == "label":
        blocks = torch.arange(n_labels, device=y.device)[:, None] * n_conditions
        a, b = (blocks + i).reshape(-1), (blocks + j).reshape(-1)
        return _block_mmd(y, member.reshape(len(y), -1), a, b, shared.reshape(-1), bandwidths)
    # per pair, both sides weighted to the mean of their label proportions over shared labels
    shared = shared.to(y.dtype)
    side_counts = torch.stack([counts[:, i], counts[:, j]], -1) * shared[..., None]
    proportions = side_counts / side_counts.sum(0).clamp_min(1)
    per_cell = proportions.mean(-1, keepdim=True) / side_counts.clamp_min(1)  # (labels, pairs, 2)
    sides = torch.stack([i, j], -1)  # (pairs, 2)
    weights = torch.einsum("nl,lps,nps->nps", label_hot, per_cell, one_hot[:, sides])
    n_pairs = i.numel()
    a = torch.arange(n_pairs, device=y.device) * 2
    return _block_mmd(y, weights.reshape(len(y), -1), a, a + 1, shared.sum(0) > 0, bandwidths)


def _block_mmd(
    y: torch.Tensor,
    mass: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    valid: torch.Tensor,
    bandwidths: str | Sequence[float],
) -> torch.Tensor:
    """Mean over the ``valid`` pairs of MMD² between weighted columns ``a`` and ``b`` of ``mass``.

    ``mass`` (cells, groups) holds non-negative weights of each cell in each group; group means
    of the kernel are ``mass.T @ K @ mass`` over the products of the group totals.
    """
    used = torch.zeros(mass.shape[1], dtype=y.dtype, device=y.device)
    used = used.index_add(0, a, valid.to(y.dtype)).index_add(0, b, valid.to(y.dtype)) > 0
    rows = (mass * used).sum(1) > 0
    d2 = squared_distances(y, y)
    sigma = resolve_bandwidths(d2, bandwidths, norms=y.pow(2).sum(-1), rows=rows)
    kernel = multiscale_rbf_kernel(d2, sigma)
    totals = mass.sum(0)
    totals = torch.where(totals > 0, totals, 1.0)  # empty groups: zero means, not 0 / 0
    # block means of the kernel matrix: means[g, h] = mean of k(u, v), u in group g, v in h
    means = (mass.T @ kernel @ mass) / (totals[:, None] * totals[None, :])
    within = torch.diagonal(means)
    pair_mmd = (within[a] + within[b] - 2 * means[a, b]).clamp_min(0.0)
    return torch.where(valid, pair_mmd, 0.0).sum() / valid.sum().clamp_min(1)
