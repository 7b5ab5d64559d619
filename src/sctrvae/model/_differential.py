"""Differential response: the predicted log fold change of each gene between two conditions.

Paired counterfactuals: each group's source-condition cells are encoded once, and every draw of
``z`` is decoded under both conditions, so the cells' baseline differences cancel. The estimand
is the group's population response, the log2 ratio of its mean normalised expressions (what
``observed_lfc`` measures on real cells). Its uncertainty adds to the spread over draws of ``z``
what the draws cannot know: how far the model's responses are from the measured ones on the
groups it saw, and, for a group never measured in the target condition, how much the groups'
responses differ from one another (the error of transferring a response at all).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.stats import norm

from .._utils import hedged_change

#: Default pseudocount, in counts at the median library size of a group's source cells.
PSEUDOCOUNT_COUNTS = 0.5


def _mean_proportions(counts) -> np.ndarray:
    """Mean over cells of each cell's counts divided by its total (sparse stays sparse)."""
    weights = 1.0 / np.asarray(counts.sum(1), dtype=np.float64).ravel()
    return np.asarray(counts.T @ weights).ravel() / weights.size


def _observed_lfc(source_counts, target_counts, pseudocounts: float) -> np.ndarray:
    """log2 ratio of the mean proportions of the measured cells, target vs source."""
    return np.log2(_mean_proportions(target_counts) + pseudocounts) - np.log2(
        _mean_proportions(source_counts) + pseudocounts
    )


def _population_lfc(
    source_scale: np.ndarray, target_scale: np.ndarray, pseudocounts: float
) -> np.ndarray:
    """Per draw, the log2 ratio of the cells' mean normalised expressions: (draws, genes)."""
    return np.log2(target_scale.mean(1) + pseudocounts) - np.log2(
        source_scale.mean(1) + pseudocounts
    )


def _transfer_variance(observed: dict[str, np.ndarray], model: dict[str, np.ndarray]):
    """Per gene: the model's misfit on the measured groups, and the groups' spread of response.

    ``misfit``: mean over the measured groups of (model's − measured LFC)². ``spread(g)``: the
    variance of the other measured groups' LFCs times ``1 + 1/k``, the error of predicting an
    unmeasured group by their mean (0 with fewer than two).
    """
    measured = [g for g in observed if g in model]
    misfit = np.mean([(model[g] - observed[g]) ** 2 for g in measured], 0) if measured else 0.0

    def spread(g: str) -> np.ndarray | float:
        others = np.stack([observed[h] for h in observed if h != g]) if observed else None
        if others is None or len(others) < 2:
            return 0.0
        return others.var(0, ddof=1) * (1 + 1 / len(others))

    return misfit, spread


def response_table(
    decode: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    counts,
    group: np.ndarray,
    condition: np.ndarray,
    gene_names: Sequence[str],
    source: str,
    target: str,
    groups: Sequence[str],
    max_cells: int | None = 500,
    delta: float = 0.25,
    pseudocounts: float | None = None,
    credible_level: float = 0.95,
    random_state: int | None = 0,
    weights: Mapping[str, float] | None = None,
    transfer_se: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Predicted response of each group and gene to ``target`` vs ``source``, with uncertainty.

    The engine of :meth:`~sctrvae.TRVAEModel.differential_response` (where the arguments and
    the returned columns are described), for any model: ``decode(cells)`` returns the
    normalised expressions of those cells decoded under ``source`` and under ``target``, each
    ``(draws, cells, genes)``; ``counts`` are the measured counts, ``group`` and ``condition``
    each cell's group and condition. Every group with ``source`` cells is decoded (the measured
    ones give the model's misfit), and ``groups`` are returned. ``transfer_se``: per group never
    measured in ``target``, a per-gene standard error of a transferred response (log2 units)
    measured on held-out groups, which replaces the misfit and the spread of responses.
    """
    rng = np.random.default_rng(random_state)
    missing = [g for g in groups if not ((group == g) & (condition == source)).any()]
    if missing:
        raise ValueError(f"Group {missing[0]!r} has no cells in {source!r} to predict from.")
    decoded = list(dict.fromkeys([*groups, *np.unique(group[condition == source])]))
    stats, observed, model = {}, {}, {}
    for g in decoded:
        source_cells = np.flatnonzero((group == g) & (condition == source))
        target_cells = np.flatnonzero((group == g) & (condition == target))
        source_counts = counts[source_cells]
        if max_cells is not None and source_cells.size > max_cells:
            source_cells = np.sort(rng.choice(source_cells, max_cells, replace=False))
        source_scale, target_scale = decode(source_cells)
        pc = pseudocounts
        if pc is None:
            pc = PSEUDOCOUNT_COUNTS / float(np.median(np.asarray(source_counts.sum(1)).ravel()))
        draws = _population_lfc(source_scale, target_scale, pc)
        model[g] = draws.mean(0)
        if target_cells.size:
            observed[g] = _observed_lfc(source_counts, counts[target_cells], pc)
        stats[g] = {
            "draws_var": draws.var(0),
            "scale_source": source_scale.mean((0, 1)),
            "scale_target": target_scale.mean((0, 1)),
            "n_cells": source_cells.size,
            "n_target_cells": target_cells.size,
            "pseudocounts": pc,
        }
    misfit, spread = _transfer_variance(observed, model)
    z = norm.ppf(0.5 + credible_level / 2)
    tables = []
    for g in groups:
        others = [observed[h] for h in observed if h != g]
        shared = np.mean(others, 0) if others else np.full(len(gene_names), np.nan)
        weight = 1.0 if weights is None or not others else float(weights.get(g, 1.0))
        mean = model[g] if weight == 1.0 else hedged_change(model[g], shared, weight)
        if g not in observed and transfer_se is not None and g in transfer_se:
            variance = stats[g]["draws_var"] + np.square(transfer_se[g])
        else:
            variance = stats[g]["draws_var"] + misfit + (0.0 if g in observed else spread(g))
        std = np.sqrt(variance)
        up, down = norm.sf((delta - mean) / std), norm.cdf((-delta - mean) / std)
        table = pd.DataFrame(
            {
                "group": g,
                "gene": np.asarray(gene_names).astype(str),
                "lfc_mean": mean,
                "lfc_std": std,
                "lfc_lower": mean - z * std,
                "lfc_upper": mean + z * std,
                "proba_de": up + down,
                "proba_up": up,
                "proba_down": down,
                "lfc_model": model[g],
                "lfc_shared": shared,
                "weight": weight,
                "scale_source": stats[g]["scale_source"],
                "scale_target": stats[g]["scale_target"],
                "observed_lfc": observed.get(g, np.nan),
            }
        )
        for key in ("n_cells", "n_target_cells", "pseudocounts"):
            table[key] = stats[g][key]
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    result["group"] = pd.Categorical(result["group"], categories=list(groups))
    return result
