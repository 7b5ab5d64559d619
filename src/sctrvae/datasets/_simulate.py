"""A negative-binomial simulator of cell types × conditions with known responses."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from numpy.typing import ArrayLike


def simulate(
    n_cells: int = 3000,
    n_genes: int = 500,
    n_cell_types: int = 4,
    conditions: Sequence[str] = ("control", "stimulated"),
    response_fraction: float = 0.1,
    n_cell_states: int = 3,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    chunk_size: int = 100_000,
    seed: int = 0,
    cell_type_proportions: ArrayLike | None = None,
    group_effect: float = 1.0,
) -> ad.AnnData:
    """Simulate raw counts of cell types under several conditions.

    Each cell type has its own baseline profile and a continuous within-type state. Every
    condition but the first shifts the log-expression of ``response_fraction`` of the genes: a
    response shared by all cell types, scaled by a type-specific strength, plus type-specific
    genes, so that a held-out (cell type, condition) is predictable from the others but not
    equal to their average. Counts are NB(mean, ``dispersion``) at a log-normal library size.

    Parameters
    ----------
    n_cells, n_genes, n_cell_types
        Size of the data. Cells are generated in chunks of ``chunk_size`` straight into CSR,
        so a million cells never exist as a dense matrix.
    conditions
        Condition names; the first is the unperturbed reference.
    response_fraction
        Fraction of genes that respond to each non-reference condition.
    n_cell_states
        Dimensions of the within-cell-type continuous state.
    library_size
        Median total counts per cell.
    dispersion
        Inverse dispersion θ of the negative binomial.
    seed
        Seed of the generator; the same seed gives the same data.
    cell_type_proportions
        Optional ``(n_conditions, n_cell_types)`` proportions of the cell types within each
        condition (rows are normalised), for conditions that differ in composition. Default:
        uniform in every condition.
    group_effect
        Scale of the cell types' own baseline deviations (``1``: as before); larger values give
        strongly different groups, e.g. patients.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32), ``obs["condition"]`` and
    ``obs["cell_type"]`` (categorical), and the truth in ``uns["simulation"]``: ``"log_means"``
    of shape ``(n_cell_types, n_conditions, n_genes)`` (log of the expected proportions of a cell
    in the average state) and ``"response_genes"`` (boolean, per condition).
    """
    if len(conditions) < 1 or len(set(conditions)) != len(conditions):
        raise ValueError("conditions must be distinct names, at least one.")
    if n_cells < 1 or n_genes < 2 or n_cell_types < 1:
        raise ValueError("n_cells, n_genes and n_cell_types must be positive (n_genes >= 2).")
    rng = np.random.default_rng(seed)
    n_conditions = len(conditions)
    baseline = group_effect * rng.normal(0.0, 1.0, (n_cell_types, n_genes))
    baseline += rng.normal(0.0, 1.5, n_genes)
    state_loadings = rng.normal(0.0, 0.3, (n_cell_types, n_cell_states, n_genes))

    response = np.zeros((n_cell_types, n_conditions, n_genes))
    response_genes = np.zeros((n_conditions, n_genes), dtype=bool)
    n_responding = max(1, round(response_fraction * n_genes))
    for c in range(1, n_conditions):
        shared, shared_effect = shared_response(rng, n_genes, n_responding)
        response_genes[c, shared] = True
        strength = rng.uniform(0.5, 1.5, n_cell_types)
        for t in range(n_cell_types):
            response[t, c, shared] = strength[t] * shared_effect
            specific = rng.choice(n_genes, max(1, n_responding // 4), replace=False)
            response[t, c, specific] += rng.normal(0.0, 1.0, specific.size)
            response_genes[c, specific] = True

    log_means = baseline[:, None, :] + response
    log_means -= np.log(np.exp(log_means).sum(-1, keepdims=True))

    cell_type = rng.integers(0, n_cell_types, n_cells)
    condition = rng.integers(0, n_conditions, n_cells)
    if cell_type_proportions is not None:
        proportions = np.asarray(cell_type_proportions, dtype=float)
        if proportions.shape != (n_conditions, n_cell_types) or (proportions < 0).any():
            raise ValueError(
                "cell_type_proportions must be non-negative, of shape (n_conditions, "
                f"n_cell_types) = {(n_conditions, n_cell_types)}; got {proportions.shape}."
            )
        cumulative = np.cumsum(proportions / proportions.sum(1, keepdims=True), 1)
        cell_type = (rng.random(n_cells)[:, None] > cumulative[condition]).sum(1)
        cell_type = np.minimum(cell_type, n_cell_types - 1)  # rounding of the last cumsum

    def logits_of(cells: slice) -> np.ndarray:
        t, c = cell_type[cells], condition[cells]
        state = rng.normal(0.0, 1.0, (t.size, n_cell_states))
        return log_means[t, c] + np.einsum("ns,nsg->ng", state, state_loadings[t])

    counts = draw_in_chunks(rng, n_cells, chunk_size, logits_of, library_size, dispersion)
    columns = {
        "condition": (condition, conditions),
        "cell_type": (cell_type, [f"type_{i}" for i in range(n_cell_types)]),
    }
    truth = {"log_means": log_means, "response_genes": response_genes}
    return simulated_anndata(counts, columns, truth, seed)


def shared_response(
    rng: np.random.Generator, n_genes: int, n_responding: int
) -> tuple[np.ndarray, np.ndarray]:
    """A condition's response shared by the cell types: its genes and their log-fold changes.

    ``n_responding`` genes, each up or down by 0.8 to 2.5 (before each type's strength).
    """
    genes = rng.choice(n_genes, n_responding, replace=False)
    return genes, rng.choice([-1.0, 1.0], n_responding) * rng.uniform(0.8, 2.5, n_responding)


def draw_counts(
    rng: np.random.Generator, logits: np.ndarray, library_size: float, dispersion: float
) -> sp.csr_matrix:
    """NB counts (CSR, float32) of cells with log-proportions ``logits`` (cells × genes).

    Library sizes are log-normal around ``library_size``; ``dispersion`` is the NB's θ.
    """
    proportions = np.exp(logits - logits.max(1, keepdims=True))
    proportions /= proportions.sum(1, keepdims=True)
    library = library_size * rng.lognormal(0.0, 0.35, (logits.shape[0], 1))
    mean = proportions * library
    counts = rng.poisson(rng.gamma(dispersion, mean / dispersion))
    return sp.csr_matrix(counts.astype(np.float32))


def draw_in_chunks(
    rng: np.random.Generator,
    n_cells: int,
    chunk_size: int,
    logits_of: Callable[[slice], np.ndarray],
    library_size: float,
    dispersion: float,
) -> sp.csr_matrix:
    """:func:`draw_counts` of ``n_cells`` cells, ``chunk_size`` at a time (one chunk dense).

    ``logits_of(cells)``: the log-proportions of the cells of the slice ``cells``; it may draw
    from ``rng`` (before the chunk's counts are drawn).
    """
    blocks = [
        draw_counts(rng, logits_of(slice(start, start + chunk_size)), library_size, dispersion)
        for start in range(0, n_cells, chunk_size)
    ]
    return sp.vstack(blocks, format="csr") if len(blocks) > 1 else blocks[0]


def simulated_anndata(
    counts: sp.csr_matrix,
    columns: dict[str, tuple[np.ndarray, Sequence[str]]],
    truth: dict,
    seed: int,
) -> ad.AnnData:
    """A simulation's AnnData: cells ``cell_<i>``, genes ``gene_<j>``, the truth in ``uns``.

    ``columns``: per ``obs`` column, each cell's code and the categories' names (a
    ``"condition"`` column among them). ``uns["simulation"]`` holds ``truth``, the conditions
    and ``seed``.
    """
    obs = pd.DataFrame(
        {
            name: pd.Categorical.from_codes(codes, categories=list(categories))
            for name, (codes, categories) in columns.items()
        },
        index=[f"cell_{i}" for i in range(counts.shape[0])],
    )
    var = pd.DataFrame(index=[f"gene_{j}" for j in range(counts.shape[1])])
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    conditions = list(columns["condition"][1])
    adata.uns["simulation"] = {**truth, "conditions": conditions, "seed": seed}
    return adata
