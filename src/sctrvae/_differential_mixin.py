"""``differential_response()``: the predicted log fold change of each gene, per group."""

from __future__ import annotations

from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ._counterfactual import paired_scales
from ._differential import response_table
from ._rollback import restores_adata_on_failure
from ._validation import check_not_view


class DifferentialResponseMixin:
    """Paired counterfactual log fold changes with scvi-tools' "change"-mode statistics."""

    @restores_adata_on_failure
    def differential_response(
        self,
        adata: ad.AnnData | None,
        groupby: str,
        source: str,
        target: str,
        groups: Sequence[str] | None = None,
        n_samples: int = 10,
        max_cells: int | None = 500,
        delta: float = 0.25,
        pseudocounts: float | None = None,
        credible_level: float = 0.95,
        batch_size: int | None = None,
        random_state: int | None = 0,
        key_added: str | None = None,
    ) -> pd.DataFrame:
        """Predicted log fold change of every gene, ``target`` vs ``source``, per group.

        A paired counterfactual: the ``source`` cells of each group are encoded once, and each
        draw of ``z`` is decoded under ``source`` and under ``target``. The log fold change
        ``log2(rho_target + pc) - log2(rho_source + pc)`` of the normalised expressions ``rho``
        is taken per cell and draw, so the cells' baseline differences cancel in it and what
        varies is the response itself. Its samples over draws of ``z`` and cells give the mean,
        median and credible interval, and ``proba_de`` = ``P(|LFC| >= delta)``. These are the
        conventions of scvi-tools' "change" mode (Boyeau et al. 2019; ``get_bayes_factors`` of
        :class:`scvi.model.base.DifferentialComputation`): LFC of normalised expression in log2
        with pseudocounts, the summaries with a 1000 times smaller pseudocount than the test,
        highest posterior density intervals; ``proba_de`` is their ``test_mode="two"``. As in
        scvi-tools, the draws are of ``z``, not of counts: the likelihood's noise is sampling
        noise of counts at a given depth, not uncertainty about expression.

        Parameters
        ----------
        adata
            AnnData with the training genes; ``None``: the model's.
        groupby
            Column of ``adata.obs`` with the groups (cell types).
        source, target
            Conditions to compare; the LFC is ``target`` vs ``source``.
        groups
            Groups to report; default every group with ``source`` cells.
        n_samples
            Draws of ``z`` per cell.
        max_cells
            Source cells per group at most (a random subset above; ``None``: all).
        delta
            Smallest ``|LFC|`` that counts as a response (scvi-tools' default, 0.25).
        pseudocounts
            Added to the normalised expression before the log. ``None``: half a count at the
            median library size of the group's source cells, which keeps genes the group barely
            expresses from reaching large LFCs by noise. (scvi-tools' default estimate, from
            genes with a mean count below 0.01, falls to about 1e-8 on gene-filtered data such
            as Kang's, and then shrinks nothing.)
        credible_level
            Mass of the credible interval ``[lfc_lower, lfc_upper]``.
        batch_size
            Cells per minibatch (default: scvi-tools' ``settings.batch_size``).
        random_state
            Seed of the choice of cells when a group has more than ``max_cells``; the draws of
            ``z`` follow torch's global seed (``scvi.settings.seed``).
        key_added
            Also store ``{"params", "results"}`` in ``adata.uns[key_added]``.

        Returns
        -------
        One row per group and gene: ``lfc_mean``, ``lfc_median``, ``lfc_std``, ``lfc_lower``,
        ``lfc_upper``, ``proba_de``, the mean normalised expressions ``scale_source`` and
        ``scale_target``, ``observed_lfc`` (the log2 ratio, with the pseudocount of
        ``proba_de``, of the measured cells' mean proportions; NaN for a group without
        ``target`` cells), ``n_cells`` (source cells
        used), ``n_target_cells`` (measured target cells) and ``pseudocounts``.

        Examples
        --------
        >>> df = model.differential_response(
        ...     adata, groupby="cell_type", source="control", target="stimulated"
        ... )
        >>> df[df.group == "CD4T"].nlargest(10, "proba_de")
        """
        if self.module.likelihood == "normal":
            raise ValueError(
                "differential_response needs a count likelihood ('nb' or 'zinb'): the LFC is "
                "taken between normalised expressions, which likelihood='normal' does not model."
            )
        if n_samples < 1:
            raise ValueError("n_samples must be a positive integer.")
        if not 0 < credible_level < 1:
            raise ValueError("credible_level must be between 0 and 1.")
        source_code, target_code = self._condition_code(source), self._condition_code(target)
        self._check_if_trained(warn=False)
        if adata is not None and key_added is not None:
            check_not_view(adata, "differential_response(key_added=...)")
        adata = self._prepare(adata, None, None)[0]
        if groupby not in adata.obs:
            raise KeyError(f"groupby={groupby!r} is not a column of adata.obs.")
        group = adata.obs[groupby].astype(str).to_numpy()
        condition = adata.obs[self.condition_key].astype(str).to_numpy()
        if groups is None:  # in category order, as scanpy orders groups
            categories = adata.obs[groupby].astype("category").cat.categories.astype(str)
            groups = [g for g in categories if ((group == g) & (condition == source)).any()]

        def decode(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            loader = self._make_data_loader(adata, indices=cells, batch_size=batch_size)
            return paired_scales(self.module, loader, source_code, target_code, n_samples)

        result = response_table(
            decode,
            self._counts(adata),
            group,
            condition,
            adata.var_names,
            source,
            target,
            groups,
            max_cells=max_cells,
            delta=delta,
            pseudocounts=pseudocounts,
            credible_level=credible_level,
            random_state=random_state,
        )
        if key_added is not None:
            adata.uns[key_added] = {
                "params": {
                    "groupby": groupby,
                    "source": str(source),
                    "target": str(target),
                    "n_samples": n_samples,
                    "max_cells": -1 if max_cells is None else max_cells,
                    "delta": delta,
                    "credible_level": credible_level,
                },
                "results": result,
            }
        return result
