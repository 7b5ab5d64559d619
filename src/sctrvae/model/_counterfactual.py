"""The parts of a counterfactual prediction: decoding minibatches, and the AnnData of the result."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import BaseModuleClass

from .._constants import DRAW_OBS, NORMALIZED_LAYER, PREDICTION_LAYER
from ..module._covariates import covariate_tensors, with_batch


@torch.inference_mode()
def decoded_batches(
    module: BaseModuleClass,
    loader: Iterable[dict[str, torch.Tensor]],
    target: int | None,
    n_samples: int,
    library_size: float | None = None,
    batch: int | None = None,
    normalized: bool = True,
) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Decode the loader's cells, encoded under their own condition, under condition ``target``.

    One minibatch at a time: memory is that of one minibatch, whatever the number of cells.

    Parameters
    ----------
    module
        A trained :class:`~sctrvae.TRVAEModule` (put in eval mode here).
    loader
        Minibatches of registered tensors.
    target
        Code of the condition to decode under; ``None``: each cell's own condition (and its own
        covariates), the reconstruction.
    n_samples
        ``0``: the posterior mean of ``z`` and the likelihood's mean. Otherwise that many draws
        of ``z`` and of the likelihood per cell.
    library_size
        Decode every cell at this total count; ``None``: each cell's own.
    batch
        Decode every cell as this batch (code of the first categorical covariate); ``None``:
        each cell's own covariates.
    normalized
        Also return the decoder's proportions (count likelihoods).

    Yields
    ------
    The minibatch's positions among the loader's cells, and its float32 arrays: ``"expression"``
    (means or draws; with draws a leading draw axis, also for one draw), ``"normalized"`` (the
    decoder's proportions, shaped alike) and ``"observed"`` (the counts read, cells × genes).
    """
    module.eval()
    library = {} if library_size is None else {"library_size": library_size}
    forward_kwargs = {
        "inference_kwargs": {"give_mean": True} if n_samples == 0 else {"n_samples": n_samples},
        "get_generative_input_kwargs": library,
        "compute_loss": False,
    }
    if target is not None:
        forward_kwargs["generative_kwargs"] = {"transform_batch": target}
    start = 0
    for tensors in loader:
        n = tensors[REGISTRY_KEYS.X_KEY].shape[0]
        if target is not None:
            tensors = with_batch(tensors, batch)
        _, outputs = module.forward(tensors, **forward_kwargs)
        px = outputs["px"]
        out = {"expression": px.mean if n_samples == 0 else px.sample()}
        if normalized and module.likelihood != "normal":
            out[NORMALIZED_LAYER] = px.scale
        out = {key: value.cpu().numpy() for key, value in out.items()}
        if n_samples:  # a draw axis also for one draw
            out = {key: value.reshape(n_samples, n, -1) for key, value in out.items()}
        out["observed"] = tensors[REGISTRY_KEYS.X_KEY].cpu().numpy()  # already read
        yield slice(start, start + n), out
        start += n


def fill(
    arrays: dict[str, np.ndarray], cells: slice, values: dict[str, np.ndarray], n_cells: int
) -> None:
    """Copy one minibatch's ``values`` into ``arrays`` at the positions ``cells``.

    An array is allocated at its first minibatch: ``n_cells`` cells, the draws and genes of the
    minibatch's, float32.
    """
    for key, value in values.items():
        if key not in arrays:
            arrays[key] = np.empty((*value.shape[:-2], n_cells, value.shape[-1]), np.float32)
        arrays[key][..., cells, :] = value


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
    those of :func:`decoded_batches` for these cells (``"expression"`` becomes ``X``), and
    the readout log-normalised (``"log_normalized"``), each a layer where present.
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
    layers = {
        k: v.reshape(-1, n_genes)
        for k, v in arrays.items()
        if k in (NORMALIZED_LAYER, PREDICTION_LAYER)
    }
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
