"""Patients that differ at baseline, respond through a shared map, and one look-alike pair."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np

from ._simulate import draw_in_chunks, simulated_anndata


def simulate_patients(
    n_cells: int = 2500,
    n_genes: int = 300,
    n_groups: int = 5,
    conditions: Sequence[str] = ("control", "stimulated"),
    pair_response: Literal["unlike", "alike", "own"] = "unlike",
    group_effect: float = 3.0,
    n_programs: int = 2,
    response_fraction: float = 0.15,
    pair_distance: float = 0.3,
    idiosyncratic: float = 2.0,
    n_cell_states: int = 3,
    library_size: float = 2000.0,
    dispersion: float = 5.0,
    chunk_size: int = 100_000,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate patients whose response is predictable from cell state, except for one pair.

    Each group ("patient") has its own strong baseline deviation (scale ``group_effect``), a
    within-group continuous state, and an activity of ``n_programs`` gene programs. Each cell's
    program activity (its group's plus cell-to-cell variation) shifts its baseline expression
    and, in every condition but the first, its response through one map shared by all groups: a
    shared response plus program activity × a response pattern per program. Look-alike cells
    therefore respond alike, and a group's response is predictable from its cells' state.

    The last two groups form a look-alike pair: the second copies the first's baseline up to
    small noise (``pair_distance``) and its program activity, so the pair is the closest of all
    pairs at baseline. With ``pair_response="unlike"`` the pair's responses also carry
    opposite idiosyncratic parts (``±idiosyncratic`` × a pattern that no state predicts), so the
    look-alikes respond least alike of all pairs, and borrowing the look-alike's response is
    wrong; ``"alike"`` is the control design, where the pair follows the shared map as every
    other group does and responds alike. ``"own"``: there is no look-alike pair; the last group
    looks like nobody (its own baseline and program activity, as every other group) and its
    response carries an idiosyncratic part (``idiosyncratic`` × a pattern no state predicts):
    a group whose response is its own, with no look-alike to blame.

    Parameters
    ----------
    n_cells, n_genes, n_groups
        Size of the data; ``n_groups >= 3``.
    conditions
        Condition names; the first is the unperturbed reference.
    pair_response
        ``"unlike"`` (the failure design), ``"alike"`` (the control design) or ``"own"`` (one
        group with its own response and no look-alike).
    group_effect
        Scale of each group's own baseline deviation (log scale).
    n_programs
        Number of gene programs whose activity drives the state-dependent response.
    response_fraction
        Fraction of genes that respond to each non-reference condition.
    pair_distance
        Standard deviation of the second pair member's baseline deviation from the first.
    idiosyncratic
        Scale of the pair's opposite responses (``"unlike"``) or of the last group's own
        response (``"own"``).
    n_cell_states
        Dimensions of the within-group state that does not affect the response.
    library_size, dispersion, chunk_size
        As in :func:`sctrvae.datasets.simulate`.
    seed
        Seed of the generator; the same seed gives the same data.

    Returns
    -------
    AnnData with integer counts in ``X`` (CSR, float32), ``obs["condition"]`` and
    ``obs["patient"]`` (categorical), and the truth in ``uns["simulation"]``, which holds
    ``"log_means"`` of shape ``(n_groups, n_conditions, n_genes)`` at each group's average
    program activity, ``"response_genes"`` (boolean, per condition), ``"program_activity"`` of
    shape ``(n_groups, n_programs)``, ``"pair"`` (the look-alike pair's names; empty for ``"own"``),
    ``"own_response"`` (the groups whose response no state predicts) and
    ``"pair_response"``.
    """
    if pair_response not in ("unlike", "alike", "own"):
        raise ValueError(
            f"pair_response must be 'unlike', 'alike' or 'own', got {pair_response!r}."
        )
    if len(conditions) < 2 or len(set(conditions)) != len(conditions):
        raise ValueError("conditions must be distinct names, at least two.")
    if n_groups < 3 or n_cells < 1 or n_genes < 10:
        raise ValueError("n_groups >= 3, n_cells >= 1 and n_genes >= 10 are needed.")
    rng = np.random.default_rng(seed)
    n_conditions = len(conditions)
    p, q = n_groups - 2, n_groups - 1
    deviation = group_effect * rng.normal(0.0, 1.0, (n_groups, n_genes))
    paired = pair_response != "own"
    if paired:
        deviation[q] = deviation[p] + rng.normal(0.0, pair_distance, n_genes)
    baseline = deviation + rng.normal(0.0, 1.5, n_genes)
    programs = rng.normal(0.0, 0.5, (n_programs, n_genes))
    activity = rng.normal(0.0, 1.0, (n_groups, n_programs))
    if paired:
        activity[q] = activity[p]
    state_loadings = rng.normal(0.0, 0.3, (n_groups, n_cell_states, n_genes))

    # per condition: shared response, response pattern per program, the pair's own part
    n_responding = max(1, round(response_fraction * n_genes))
    shared = np.zeros((n_conditions, n_genes))
    patterns = np.zeros((n_conditions, n_programs, n_genes))
    own = np.zeros((n_groups, n_conditions, n_genes))
    response_genes = np.zeros((n_conditions, n_genes), dtype=bool)
    for c in range(1, n_conditions):
        genes = rng.choice(n_genes, n_responding, replace=False)
        response_genes[c, genes] = True
        sign = rng.choice([-1.0, 1.0], n_responding)
        shared[c, genes] = sign * rng.uniform(0.8, 2.0, n_responding)
        patterns[c][:, genes] = rng.normal(0.0, 0.4, (n_programs, n_responding))
        idio = idiosyncratic * rng.normal(0.0, 1.0, n_responding)
        if pair_response == "unlike":
            own[p, c, genes], own[q, c, genes] = idio, -idio
        elif pair_response == "own":
            own[q, c, genes] = idio

    def condition_logits(group, condition, program_activity):
        return (
            baseline[group]
            + program_activity @ programs
            + shared[condition]
            + np.einsum("nk,nkg->ng", program_activity, patterns[condition])
            + own[group, condition]
        )

    group = rng.integers(0, n_groups, n_cells)
    condition = rng.integers(0, n_conditions, n_cells)

    def logits_of(cells: slice) -> np.ndarray:
        g, c = group[cells], condition[cells]
        cell_activity = activity[g] + rng.normal(0.0, 0.7, (g.size, n_programs))
        state = rng.normal(0.0, 1.0, (g.size, n_cell_states))
        logits = condition_logits(g, c, cell_activity)
        logits += np.einsum("ns,nsg->ng", state, state_loadings[g])
        return logits

    counts = draw_in_chunks(rng, n_cells, chunk_size, logits_of, library_size, dispersion)

    all_groups = np.repeat(np.arange(n_groups), n_conditions)
    all_conditions = np.tile(np.arange(n_conditions), n_groups)
    log_means = condition_logits(all_groups, all_conditions, activity[all_groups])
    log_means -= log_means.max(-1, keepdims=True)
    log_means -= np.log(np.exp(log_means).sum(-1, keepdims=True))

    names = [f"patient_{i}" for i in range(n_groups)]
    truth = {
        "log_means": log_means.reshape(n_groups, n_conditions, n_genes),
        "response_genes": response_genes,
        "program_activity": activity,
        "pair": [names[p], names[q]] if paired else [],
        "own_response": {"unlike": [names[p], names[q]], "alike": [], "own": [names[q]]}[
            pair_response
        ],
        "pair_response": pair_response,
    }
    columns = {"condition": (condition, conditions), "patient": (group, names)}
    return simulated_anndata(counts, columns, truth, seed)
