"""Donors, batches and other covariates in the AnnData: their fields, checks and categories.

The condition holds scvi-tools' batch slot (``REGISTRY_KEYS.BATCH_KEY``), which prediction
(``transform_batch``) and condition surgery rely on. The user's ``batch_key`` (donor, lane) is
therefore registered as the *first* categorical covariate (``REGISTRY_KEYS.CAT_COVS_KEY``), the
other categorical covariates after it; ``setup_args["batch_key"]`` records that it is there.
What the module does with a minibatch's covariates is in ``module/_covariates.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalJointObsField, NumericalJointObsField

_CAT, _CONT = REGISTRY_KEYS.CAT_COVS_KEY, REGISTRY_KEYS.CONT_COVS_KEY


def categorical_keys(batch_key: str | None, categorical_covariate_keys: Sequence[str] | None):
    """The columns of the categorical covariates, ``batch_key`` first."""
    keys = ([batch_key] if batch_key is not None else []) + list(categorical_covariate_keys or [])
    if len(set(keys)) != len(keys):
        raise ValueError(f"A column is given twice among batch_key and the covariates: {keys}.")
    return keys


def covariate_fields(
    batch_key: str | None,
    categorical_covariate_keys: Sequence[str] | None,
    continuous_covariate_keys: Sequence[str] | None,
) -> list:
    """scvi-tools' joint obs fields of the covariates; none when none are given.

    Registered only when given, so that a model without covariates has the registry (and the
    architecture) of the previous releases.
    """
    fields = []
    cat_keys = categorical_keys(batch_key, categorical_covariate_keys)
    if cat_keys:
        fields.append(CategoricalJointObsField(_CAT, cat_keys))
    if continuous_covariate_keys:
        fields.append(NumericalJointObsField(_CONT, list(continuous_covariate_keys)))
    return fields


def check_covariate_columns(
    obs: pd.DataFrame,
    condition_key: str,
    categorical: Sequence[str],
    continuous: Sequence[str],
    known: dict[str, Sequence[str]] | None = None,
) -> None:
    """Raise for a covariate column that is missing, has missing values, or cannot be used.

    ``known``: categories of each categorical covariate seen in training; other categories are an
    error (a prediction cannot decode a donor the model has no weights for; map it as a query).
    """
    for key in [*categorical, *continuous]:
        if key not in obs:
            raise KeyError(f"Covariate {key!r} is not a column of adata.obs.")
        if key == condition_key:
            raise ValueError(
                f"{key!r} is the condition; a covariate must be another column (the condition is "
                "what the model transfers, covariates are kept or set at prediction)."
            )
    for key in categorical:
        n_missing = int(obs[key].isna().sum())
        if n_missing:
            raise ValueError(
                f"adata.obs[{key!r}] is missing for {n_missing} cells; fill it in (e.g. "
                "'unknown') or drop those cells."
            )
        if known is not None:
            unseen = sorted(set(obs[key].astype(str)) - {str(c) for c in known[key]})
            if unseen:
                raise ValueError(
                    f"adata.obs[{key!r}] has categories the model was not trained on: {unseen}. "
                    "Map those cells with TRVAEModel.load_query_data (scArches surgery for new "
                    "categories), or keep only known ones."
                )
    for key in continuous:
        values = pd.to_numeric(obs[key], errors="coerce").to_numpy(dtype=float)
        n_bad = int((~np.isfinite(values)).sum())
        if n_bad:
            raise ValueError(
                f"adata.obs[{key!r}] has {n_bad} missing, NaN, infinite or non-numeric values; "
                "a continuous covariate needs a finite number for every cell."
            )


def registered_covariates(registry: dict) -> tuple[dict[str, list[str]], list[str]]:
    """Categories of each categorical covariate (in order) and the continuous covariate names."""
    fields = registry["field_registries"]
    categorical, continuous = {}, []
    if _CAT in fields and fields[_CAT]["state_registry"]:
        state = fields[_CAT]["state_registry"]
        categorical = {k: [str(c) for c in state["mappings"][k]] for k in state["field_keys"]}
    if _CONT in fields and fields[_CONT]["state_registry"]:
        continuous = list(fields[_CONT]["state_registry"]["columns"])
    return categorical, continuous


def batch_code(registry: dict, batch: str) -> int:
    """Code of category ``batch`` of the registered ``batch_key`` (the first covariate)."""
    batch_key = registry["setup_args"].get("batch_key")
    if batch_key is None:
        raise ValueError(
            "target_batch needs a batch: register it with setup_anndata(..., batch_key=...)."
        )
    categories = registered_covariates(registry)[0][batch_key]
    if str(batch) not in categories:
        raise ValueError(f"Unknown batch {batch!r}; the model knows {categories}.")
    return categories.index(str(batch))


def sampler_labels(adata_manager, indices: np.ndarray) -> np.ndarray | None:
    """Codes the condition-balanced sampler deals evenly: the label, and the batch when set.

    With a ``batch_key``, each (label, batch, condition) stratum is spread over the minibatches,
    so that every minibatch holds the donor mix the batch-matched MMD compares.
    """
    labels = None
    if REGISTRY_KEYS.LABELS_KEY in adata_manager.data_registry:
        labels = adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY).reshape(-1)[indices]
    if adata_manager.registry["setup_args"].get("batch_key") is None:
        return labels
    batch = np.asarray(adata_manager.get_from_registry(_CAT))[:, 0][indices].astype(np.int64)
    if labels is None:
        return batch
    return labels.astype(np.int64) * (int(batch.max()) + 1) + batch
