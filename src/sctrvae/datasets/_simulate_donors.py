"""A negative-binomial simulator of cell types × donors × conditions with donor effects."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np

from ._simulate import draw_counts, shared_response, simulated_anndata


def simulate_donors(
    n_cells: int = 2000,
    n_genes: int = 300,
    n_cell_types: int = 3,
    n_donors: int = 4,
    conditions: Sequence[str] = ("control", "stimulated"),
    donor_effect: float = 0.5,
    donor_response: float = 0.0,
    response_fraction: float = 0.1,
    condition_imbalance: float = 0.0,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate raw counts of cell types from several donors under several conditions.

    As :func:`~sctrvae.datasets.simulate` (type baselines, a continuous within-type state, a
    response shared by the types at type-specific strengths plus type-specific genes), with
    donors: each donor shifts the log-expression of every gene by its own baseline
    (``donor_effect`` is the standard deviation of that shift) and its library sizes by a
    factor, and may respond partly in its own way (``donor_response``). Every donor contributes
    cells of every cell type and condition.

    Parameters
    ----------
    n_cells, n_genes, n_cell_types, n_donors
        Size of the data.
    conditions
        Condition names; the first is the unperturbed reference.
    donor_effect
        Standard deviation of each donor's per-gene log baseline shift (``0``: no donor effect).
    donor_response
        How donor-specific the response is: each donor's response is the shared one with each
        responding gene scaled by ``1 + donor_response · N(0, 1)`` (``0``: a shared response).
    condition_imbalance
        How unequally the donors are spread over the conditions, from ``0`` (every donor's cells
        in each condition alike) to below ``1``: the first donor's share of cells in the first
        condition is ``(1 + condition_imbalance) / n_conditions``, the last donor's
        ``(1 - condition_imbalance) / n_conditions``, the others' in between (the rest is spread
        evenly over the other conditions). Donors then differ between the conditions beside
        the response, as in studies whose donors were not all sampled in every condition.
    response_fraction, library_size, dispersion
        As in :func:`~sctrvae.datasets.simulate`.
    seed
        Seed of the generator.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32), categorical ``obs["condition"]``,
    ``obs["cell_type"]`` and ``obs["donor"]``, and the truth in ``uns["simulation"]``:
    ``"log_means"`` of shape ``(n_cell_types, n_donors, n_conditions, n_genes)`` and
    ``"response_genes"`` (boolean, per condition).
    """
    if n_donors < 1 or n_cells < 1 or n_genes < 2 or n_cell_types < 1 or len(conditions) < 1:
        raise ValueError("n_cells, n_donors, n_cell_types and conditions must be positive.")
    if not 0.0 <= condition_imbalance < 1.0:
        raise ValueError(f"condition_imbalance must be in [0, 1), got {condition_imbalance}.")
    rng = np.random.default_rng(seed)
    n_conditions = len(conditions)
    baseline = rng.normal(0.0, 1.0, (n_cell_types, n_genes)) + rng.normal(0.0, 1.5, n_genes)
    donor_shift = rng.normal(0.0, donor_effect, (n_donors, n_genes)) if donor_effect else 0.0
    loadings = rng.normal(0.0, 0.3, (n_cell_types, 2, n_genes))
    response = np.zeros((n_cell_types, n_donors, n_conditions, n_genes))
    response_genes = np.zeros((n_conditions, n_genes), dtype=bool)
    n_responding = max(1, round(response_fraction * n_genes))
    for c in range(1, n_conditions):
        shared, effect = shared_response(rng, n_genes, n_responding)
        response_genes[c, shared] = True
        per_donor = effect * (1.0 + donor_response * rng.normal(0.0, 1.0, (n_donors, 1)))
        per_donor = per_donor * (1.0 + donor_response * rng.normal(0.0, 0.5, per_donor.shape))
        for t, strength in enumerate(rng.uniform(0.5, 1.5, n_cell_types)):
            response[t, :, c, shared] = (strength * per_donor).T
            specific = rng.choice(n_genes, max(1, n_responding // 4), replace=False)
            response[t, :, c, specific] += rng.normal(0.0, 1.0, specific.size)[:, None]
            response_genes[c, specific] = True
    donor_shift = np.broadcast_to(donor_shift, (n_donors, n_genes))
    log_means = baseline[:, None, None] + donor_shift[None, :, None] + response
    log_means -= np.log(np.exp(log_means).sum(-1, keepdims=True))

    cell_type, donor = (rng.integers(0, n, n_cells) for n in (n_cell_types, n_donors))
    condition = _draw_conditions(rng, donor, n_donors, n_conditions, condition_imbalance)
    state = rng.normal(0.0, 1.0, (n_cells, 2))
    logits = log_means[cell_type, donor, condition] + np.einsum(
        "ns,nsg->ng", state, loadings[cell_type]
    )
    donor_depth = rng.lognormal(0.0, 0.3 if donor_effect else 0.0, n_donors)[donor, None]
    counts = draw_counts(rng, logits, library_size * donor_depth, dispersion)
    columns = {
        "condition": (condition, conditions),
        "cell_type": (cell_type, [f"type_{i}" for i in range(n_cell_types)]),
        "donor": (donor, [f"donor_{i}" for i in range(n_donors)]),
    }
    truth = {"log_means": log_means, "response_genes": response_genes}
    return simulated_anndata(counts, columns, truth, seed)


def _draw_conditions(rng, donor, n_donors: int, n_conditions: int, imbalance: float):
    """Each cell's condition, from its donor's shares (see ``condition_imbalance``)."""
    if imbalance == 0.0 or n_conditions < 2:
        return rng.integers(0, n_conditions, donor.size)
    tilt = np.linspace(1.0, -1.0, n_donors) if n_donors > 1 else np.zeros(1)
    first = (1.0 + imbalance * tilt) / n_conditions
    shares = np.repeat(((1.0 - first) / (n_conditions - 1))[:, None], n_conditions, axis=1)
    shares[:, 0] = first
    cumulative = shares.cumsum(1)[donor]
    return (rng.random(donor.size)[:, None] > cumulative[:, :-1]).sum(1)
