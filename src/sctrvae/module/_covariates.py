"""The covariates of a minibatch as the module reads them, and overrides of them.

The registered covariates (the fields of ``data/_covariates.py``) reach the module as scvi-tools'
``REGISTRY_KEYS.CAT_COVS_KEY`` / ``CONT_COVS_KEY`` tensors; the ``batch_key`` is the first
categorical covariate.
"""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS


def covariate_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor | None]:
    """The registered covariates of a minibatch, as the module's ``cat_covs`` / ``cont_covs``."""
    return {
        "cat_covs": tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
        "cont_covs": tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
    }


def with_batch(tensors: dict[str, torch.Tensor], code: int | None) -> dict[str, torch.Tensor]:
    """The minibatch with every cell's batch (first categorical covariate) set to ``code``."""
    if code is None:
        return tensors
    cat_covs = tensors[REGISTRY_KEYS.CAT_COVS_KEY].clone()
    cat_covs[:, 0] = code
    return {**tensors, REGISTRY_KEYS.CAT_COVS_KEY: cat_covs}


def mmd_strata(
    labels: torch.Tensor | None, cat_covs: torch.Tensor, n_labels: int, n_batch: int
) -> tuple[torch.Tensor, int]:
    """(label, batch) codes and their number: the strata within which the MMD matches cells.

    The label-aware MMD modes compare the conditions within (``"label"``) or at equal
    proportions of (``"reweighted"``) these strata, so that a condition is not penalised for a
    different donor mix, and a donor seen in one condition only stays out of the penalty.
    """
    batch = cat_covs[:, :1].long()
    base = torch.zeros_like(batch) if labels is None else labels.reshape(-1, 1).long()
    return base * n_batch + batch, max(n_labels, 1) * n_batch
