"""Latent representations: ``z`` (scvi-tools' path) and the MMD layer ``y``."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.model.base import VAEMixin

from ..._constants import Representation
from ...module._covariates import covariate_tensors
from .._rollback import restores_adata_on_failure


class LatentMixin(VAEMixin):
    """``get_latent_representation`` with ``representation="y"`` and ``key_added``."""

    @restores_adata_on_failure
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        mc_samples: int = 5_000,
        batch_size: int | None = None,
        return_dist: bool = False,
        dataloader=None,
        representation: Representation = "z",
        key_added: str | None = None,
        **data_loader_kwargs,
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Latent ``z`` or the MMD layer ``y`` of each cell.

        The arguments before ``representation`` are those of scvi-tools'
        ``VAEMixin.get_latent_representation`` (so ``get_aggregated_posterior`` and
        ``differential_abundance`` work).

        Parameters
        ----------
        adata
            AnnData with the training genes; default: the model's.
        indices
            Cells to return; default all.
        give_mean
            Posterior mean of ``z`` (deterministic) or one sample.
        mc_samples
            As in scvi-tools; unused here: the posterior of ``z`` is Gaussian, its mean exact.
        batch_size
            Cells per forward pass (memory stays flat in the number of cells).
        return_dist
            Return the posterior means and variances of ``z`` instead.
        dataloader
            Minibatches of tensors to read instead of ``adata`` / ``indices``.
        representation
            ``"z"``: the latent space. ``"y"``: first decoder layer under the cell's own
            condition, where the MMD aligns the conditions.
        key_added
            Also write the result for all cells of ``adata`` to ``adata.obsm[key_added]``.
        **data_loader_kwargs
            Keyword arguments of the data loader.

        Returns
        -------
        Array of shape ``(n_cells, n_latent)`` or ``(n_cells, n_hidden)``; with ``return_dist``,
        the means and variances of ``z``.
        """
        if representation not in ("z", "y"):
            raise ValueError(f"representation must be 'z' or 'y', got {representation!r}.")
        if return_dist and (representation == "y" or key_added is not None):
            raise ValueError("return_dist returns the posterior of z; it takes no key_added or y.")
        if dataloader is not None and key_added is not None:
            raise ValueError("key_added writes to adata; a dataloader has no AnnData.")
        if dataloader is None:
            adata, selected, computed = self._prepare(adata, indices, key_added)
            if key_added is not None:  # obsm must cover every cell
                computed = np.arange(adata.n_obs)
            loader = self._make_data_loader(
                adata, indices=computed, batch_size=batch_size, **data_loader_kwargs
            )
        else:
            loader = dataloader
        if representation == "z":
            result = super().get_latent_representation(
                give_mean=give_mean,
                mc_samples=mc_samples,
                return_dist=return_dist,
                dataloader=loader,
            )
        else:
            result = self._decoder_layer(loader, give_mean)
        if dataloader is not None:
            return result
        if key_added is not None:
            adata.obsm[key_added] = result
        position = np.searchsorted(computed, selected)
        if return_dist:
            return result[0][position], result[1][position]
        return result[position]

    def _decoder_layer(self, dataloader, give_mean: bool) -> np.ndarray:
        """``y`` of each cell under its own condition."""
        self._check_if_trained(warn=False)
        self.module.eval()
        chunks = []
        for tensors in dataloader:
            inputs = self.module._get_inference_input(tensors)
            z = self.module.inference(**inputs, give_mean=give_mean)["z"]
            condition = tensors[REGISTRY_KEYS.BATCH_KEY]
            covariates = covariate_tensors(tensors)
            chunks.append(self.module.decoder_layer(z, condition, **covariates).cpu().numpy())
        return np.concatenate(chunks)
