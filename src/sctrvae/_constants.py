"""Names of the choices the model offers, of what predictions write, and the defaults."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Likelihood = Literal["nb", "zinb", "normal"]
Dispersion = Literal["gene", "gene-condition"]
MMDMode = Literal["global", "label", "reweighted"]
Readout = Literal["mean", "sampled", "calibrated"]
Representation = Literal["z", "y"]

#: What each ``mmd_mode`` compares; see :func:`~sctrvae.pairwise_condition_mmd`.
MMD_MODES: tuple[str, ...] = ("global", "label", "reweighted")


@dataclass(frozen=True)
class ReadoutSpec:
    """What one readout of ``predict`` draws and reads.

    Attributes
    ----------
    draws
        Draws per cell when ``predict`` is not given ``n_samples``. 0: a deterministic readout,
        which reads the likelihood's mean at the posterior mean of ``z`` and takes no draws.
    reads_reconstruction
        Whether it also reads the cells decoded under their own condition (a count
        likelihood's draws), as the calibration does.
    """

    draws: int
    reads_reconstruction: bool = False


#: The readouts of ``predict``, by name (the choices of ``Readout``): what ``predict``
#: writes and what the ensemble, the metrics and the tools read of it follow from this table.
READOUTS: dict[str, ReadoutSpec] = {
    "mean": ReadoutSpec(draws=0),
    "sampled": ReadoutSpec(draws=1),
    "calibrated": ReadoutSpec(draws=10, reads_reconstruction=True),
}

#: Names of what ``predict`` writes into the AnnData it returns. The layer with the readout,
#: log-normalised: what the metrics and the plots read by default.
PREDICTION_LAYER = "log_normalized"
#: Layer with the decoder's proportions (count likelihoods), each row summing to 1.
NORMALIZED_LAYER = "normalized"
#: ``uns`` key of the record of what was predicted (readout, target, draws, version).
PREDICTION_UNS = "sctrvae_prediction"
#: ``uns`` key of the calibration's corrections (groups × genes).
CALIBRATION_UNS = "sctrvae_calibration"
#: Draws (cells × draws) of each group that the calibrated readout averages, at least, in its
#: correction and, unless ``n_samples`` is passed, in its prediction: both are read as group
#: means, so a large group needs fewer draws per cell for the same precision. Groups of up to
#: 2,000 cells keep 10 draws per cell; from 20,000 cells, one.
CALIBRATION_DRAWS = 20_000
#: ``obs`` column with each row's draw, where draws are stacked.
DRAW_OBS = "sctrvae_draw"
#: ``obs`` column with each row's member, in an ensemble's prediction.
MEMBER_OBS = "sctrvae_member"
#: ``predict`` warns when the AnnData it returns (draws stacked) would hold more than this many
#: bytes, and points to ``key_added=..., return_anndata=False`` (one row per cell).
LARGE_PREDICTION_BYTES = 4 * 2**30

#: Adam learning rate of ``train()`` at the top of its schedule.
DEFAULT_LR = 6e-3
#: ``train()``'s learning-rate schedule: linear warm-up, then a cosine to 0 at the last step of
#: the budget, so that a run ends converged where its budget ends instead of waiting out a
#: patience window.
LR_SCHEDULE = "cosine"
#: Share of the step budget over which the learning rate warms up.
LR_WARMUP_FRACTION = 0.05
#: Learning rate of the per-gene parameters (output layer, condition offset, dispersion)
#: relative to the rest. They start near 0 and must travel several log units (interferon
#: genes' log fold changes are 3 to 6, log mean proportions span about 10), while Adam moves a
#: parameter by at most about its learning rate per step: at 3e-3 that alone took over a
#: thousand steps.
GENE_LR_SCALE = 10.0
#: Optimiser steps of linear KL warm-up (at most a quarter of the run); early stopping waits
#: for them (the loss changes meaning meanwhile). Budgets are in steps because a step, not an
#: epoch, is the unit of the optimiser's progress.
KL_WARMUP_STEPS = 150
#: Steps without a better validation loss before early stopping (rounded up to whole epochs).
PATIENCE_STEPS = 150
#: Default budget (``max_epochs=None``): ``BUDGET_EPOCHS`` passes over the training cells,
#: within ``MIN_STEPS`` and ``MAX_STEPS`` optimiser steps, and never less than one epoch. A small
#: dataset is bound by the optimiser (``MIN_STEPS``, however few its cells), a large one by the
#: passes its cells need, up to ``MAX_STEPS``.
BUDGET_EPOCHS = 5
#: Fewest optimiser steps of the default budget. With the output bias started at the genes'
#: average profile (``TRVAEModule.start_from_profiles``), 420 steps matched what 840 from a zero
#: bias reached on the 7 Kang folds × 3 seeds (``benchmarks/results/speed_candidates.md``).
MIN_STEPS = 420
#: Most optimiser steps of the default budget, unless one epoch is longer.
MAX_STEPS = 4000

#: Refits of :func:`~sctrvae.tl.transfer_check` by default: ``CHECK_REPEATS`` shuffles of the
#: checked groups, each cut into ``CHECK_FOLDS`` folds that one refit holds out together, so
#: every group is scored ``CHECK_REPEATS`` times by different refits. Eight short refits
#: rather than four longer ones at the same budget: they tell a look-alike whose response is
#: its own from one that responds like the rest (``benchmarks/results/check_strength.md``).
CHECK_FOLDS = 2
CHECK_REPEATS = 4
#: The refits of a check share this many default training budgets (in optimiser steps); their
#: predictions and set-up come on top. Two budgets leave a third fit for those and for the
#: spread of wall times between runs, within the three fits' time a check may cost.
CHECK_BUDGET_FITS = 2.0
#: Draws per cell of the check's predictions (a sampling readout, ``n_samples=None``): at most
#: ``CHECK_MAX_DRAWS``, and no more than give each held-out group ``CHECK_GROUP_DRAWS`` draws. A
#: prediction is scored on its group mean, whose Monte Carlo error over 750 draws (a few
#: thousandths of a log unit) is far below a refit's: groups of up to 150 cells keep 5 draws
#: per cell, groups of 750 cells or more one.
CHECK_MAX_DRAWS = 5
CHECK_GROUP_DRAWS = 750
#: Source cells of a group the check reads, at most (a random subset): it predicts them (scored
#: against their own mean: the score reads the group's mean change, which 1,000 cells estimate
#: about as well as 20,000), places them among the lenders whose cover ``lent`` measures, and
#: ranks the group's DEGs on as many of its cells per condition.
CHECK_MAX_CELLS = 1_000
#: Two-sided level at which a check's verdict is called; a margin whose interval holds 0 is
#: "undecided".
VERDICT_LEVEL = 0.9
#: Smallest standard deviation of a margin between refits: two refits that happen to agree do
#: not make a verdict certain.
MIN_MARGIN_SD = 0.02

#: Minibatch key of the flat (row-major) positions of the counts' non-zero entries, which the
#: training loaders add where they densify CSR rows: the likelihood then skips its own scan.
COUNT_POSITIONS_KEY = "X_nonzero"
