"""The parts of a counterfactual prediction: decoding minibatches, and the AnnData of the result."""

from __future__ import annotations

from collections.abc import Iterable

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass

from .._constants import DRAW_OBS, NORMALIZED_LAYER
from ..module._covariates import covariate_tensors, with_batch


@torch.inference_mode()
def decode_counterfactual(
    module: BaseModuleClass,
    loader: Iterable[dict[str, torch.Tensor]],
    n_cells: int,
    target: int,
    n_samples: int,
    library_size: float | None = None,
    with_reconstruction: bool = False,
    batch: int | None = None,
) -> dict[str, np.ndarray]:
    """Decode the loader's cells, encoded under their own condition, under condition ``target``.

    Parameters
    ----------
    module
        A trained :class:`~sctrvae.TRVAEModule` (put in eval mode here).
    loader
        Minibatches of registered tensors, ``n_cells`` cells in all.
    target
        Code of the condition to decode under.
    n_samples
        ``0``: the posterior mean of ``z`` and the likelihood's mean. Otherwise that many draws
        of ``z`` and of the likelihood per cell.
    library_size
        Decode every cell at this total count; ``None``: each cell's own.
    with_reconstruction
        Also decode the same cells under their own condition (``"reconstruction"``, drawn) and
        return the counts read (``"observed"``), for calibration.
    batch
        Decode every cell as this batch (code of the first categorical covariate); ``None``:
        each cell's own covariates.

    Returns
    -------
    float32 arrays, cells in loader order: ``"expression"`` (means or draws) and, for count
    likelihoods, ``"normalized"`` (the decoder's proportions); with draws a leading draw axis.
    """
    module.eval()
    library = {} if library_size is None else {"library_size": library_size}
    forward_kwargs = {
        "inference_kwargs": {"give_mean": True} if n_samples == 0 else {"n_samples": n_samples},
        "get_generative_input_kwargs": library,
        "compute_loss": False,
    }
    # outputs are filled in place, batch by batch: memory is the output plus one batch
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for tensors in loader:
        n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
        _, outputs = module.forward(
            with_batch(tensors, batch),
            generative_kwargs={"transform_batch": target},
            **forward_kwargs,
        )
        px = outputs["px"]
        out = {"expression": px.mean if n_samples == 0 else px.sample()}
        if module.likelihood != "normal":
            out[NORMALIZED_LAYER] = px.scale
        if with_reconstruction:
            _, own = module.forward(tensors, **forward_kwargs)
            out["reconstruction"] = own["px"].sample()
            out["observed"] = tensors[REGISTRY_KEYS.X_KEY]  # already read for this batch
        for key, value in out.items():
            value = value.cpu().numpy()
            if n_samples and key != "observed":  # a draw axis also for one draw
                value = value.reshape(n_samples, n, -1)
            if key not in arrays:
                arrays[key] = np.empty((*value.shape[:-2], n_cells, value.shape[-1]), np.float32)
            arrays[key][..., start : start + n, :] = value
        start += n
    return arrays


def prediction_anndata(
    obs: pd.DataFrame,
    var: pd.DataFrame,
    arrays: dict[str, np.ndarray],
    condition_key: str,
    conditions: list[str],
    target_condition: str,
    n_samples: int,
) -> ad.AnnData:
    """The predicted cells as AnnData: draws stacked (``obs["sctrvae_draw"]``), the target set.

    ``obs`` holds the predicted cells' rows (``_scvi_*`` columns are dropped); ``arrays`` are
    those of :func:`decode_counterfactual` for these cells.
    """
    obs = obs.copy()
    if n_samples > 0:
        n_cells = obs.shape[0]
        obs = pd.concat([obs] * n_samples)
        obs[DRAW_OBS] = np.repeat(np.arange(n_samples), n_cells)
        obs.index = [f"{name}-{d}" for name, d in zip(obs.index, obs[DRAW_OBS], strict=True)]
    obs[condition_key] = pd.Categorical(
        [str(target_condition)] * obs.shape[0], categories=conditions
    )
    obs = obs.drop(columns=[c for c in obs.columns if c.startswith("_scvi")])
    n_genes = var.shape[0]
    layers = {k: v.reshape(-1, n_genes) for k, v in arrays.items() if k == NORMALIZED_LAYER}
    return ad.AnnData(
        X=arrays["expression"].reshape(-1, n_genes), obs=obs, var=var.copy(), layers=layers
    )


@torch.inference_mode()
def paired_scales(
    module: BaseModuleClass,
    loader: Iterable[dict[str, torch.Tensor]],
    source: int,
    target: int,
    n_samples: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised expression of the loader's cells decoded under ``source`` and ``target``.

    Each cell is encoded with its own condition; the same ``n_samples`` draws of ``z`` are
    decoded under both conditions, so the cells' baseline differences cancel in any contrast of
    the two. Returns two arrays of shape ``(n_samples, n_cells, n_genes)``.
    """
    module.eval()
    pairs = []
    for tensors in loader:
        inference = module.inference(**module._get_inference_input(tensors))
        z = inference["qz"].sample((n_samples,))
        condition = torch.ones_like(tensors[REGISTRY_KEYS.BATCH_KEY]).to(z.device)
        covariates = {
            k: v.to(z.device) if v is not None else None
            for k, v in covariate_tensors(tensors).items()
        }
        pairs.append(
            [
                module.generative(z, condition * code, inference["library"], **covariates)[
                    "px"
                ].scale.cpu()
                for code in (source, target)
            ]
        )
    source_scale, target_scale = (
        torch.cat(side, dim=1).numpy() for side in zip(*pairs, strict=True)
    )
    return source_scale, target_scale
