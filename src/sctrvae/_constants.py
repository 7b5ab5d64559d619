"""Names of the choices the model offers, and the defaults of training and prediction."""

from __future__ import annotations

from typing import Literal

Likelihood = Literal["nb", "zinb", "normal"]
Dispersion = Literal["gene", "gene-condition"]
MMDMode = Literal["global", "label", "reweighted"]
Readout = Literal["mean", "sampled", "calibrated"]
Representation = Literal["z", "y"]

#: What each ``mmd_mode`` compares; see :func:`~sctrvae.pairwise_condition_mmd`.
MMD_MODES: tuple[str, ...] = ("global", "label", "reweighted")
#: Draws per cell when ``predict`` is not given ``n_samples``.
DEFAULT_DRAWS = {"mean": 0, "sampled": 1, "calibrated": 10}

#: Adam learning rate of ``train()``: converges in about a third of the epochs 1e-3 needs here.
DEFAULT_LR = 3e-3
#: Optimiser steps of linear KL warm-up; early stopping waits for them (the loss changes meaning
#: meanwhile). Budgets are in steps because a step, not an epoch, is the unit of the optimiser's
#: progress: an epoch of a large dataset holds many times the steps the model needs.
KL_WARMUP_STEPS = 150
#: Steps without a better validation loss before early stopping (rounded up to whole epochs).
PATIENCE_STEPS = 150
#: Default budget of optimiser steps (``max_epochs=None``); early stopping usually ends sooner.
MAX_STEPS = 2000
