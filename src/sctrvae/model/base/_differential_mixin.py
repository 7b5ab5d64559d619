"""``differential_response()``: the predicted log fold change of each gene, per group."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import anndata as ad
import numpy as np
import pandas as pd

from ..._utils import checked_interval_se
from .._counterfactual import paired_scales
from .._differential import response_table
from .._rollback import restores_adata_on_failure
from .._validation import check_not_view


def checked_transfer_se(check: pd.DataFrame, groups, n_genes: int) -> dict[str, np.ndarray]:
    """Per group, the check's calibrated standard error of a transferred change, in log2 units.

    The check measures changes of mean log-normalised expression (natural log); a log2 fold
    change is that over ``ln 2``.
    """
    changes = check.attrs.get("changes", {})
    if not changes or any(len(c["real"]) != n_genes for c in changes.values()):
        raise ValueError(
            "check must be a tl.transfer_check table of this model, over the same genes."
        )
    out = {}
    for g in groups:
        others = (c for h, c in changes.items() if h != g)
        out[g] = checked_interval_se(others) / np.log(2.0)
    return out


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
        weights: Mapping[str, float] | None = None,
        check: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Predicted log fold change of every gene, ``target`` vs ``source``, per group.

        The response of a group is the log2 ratio of its mean normalised expressions under
        ``target`` and under ``source``, ``log2(mean rho_target + pc) - log2(mean rho_source +
        pc)``: what ``observed_lfc`` measures on real cells. The ``source`` cells of each group
        are encoded once and each draw of ``z`` is decoded under both conditions (a paired
        counterfactual, so the cells' baseline differences cancel).

        Its uncertainty ``lfc_std`` is a normal standard deviation with three parts: the spread
        over draws of ``z``; the model's misfit (the mean squared difference between its
        responses and the measured ones over the groups measured in both conditions, the same
        for every group); and, for a group never measured in ``target``, the spread of the
        other groups' measured responses (times ``1 + 1/k`` for ``k`` groups), the error a
        transferred response can have. The draws alone cover the true change of a held-out
        Kang cell type at a 90% level for 15% of genes; with the other two parts, for 90%
        (``benchmarks/differential_response.py``). ``proba_up`` = ``P(LFC >= delta)``,
        ``proba_down`` = ``P(LFC <= -delta)``, ``proba_de`` their sum, under that normal.

        With ``check`` (the table of :func:`sctrvae.tl.transfer_check` for this model), the
        uncertainty of a group never measured in ``target`` follows the check's calibration
        instead, as :func:`sctrvae.tl.hedge`'s intervals do: the spread over draws plus the
        held-out error of the check's refits on the checked groups (other than the group
        itself), calibrated so that the worst-predicted refit's DEGs are covered, and, in
        quadrature, the checked groups' between-group spread of response
        (:func:`sctrvae.tl.interval_se`), converted from natural-log to log2 units.

        With ``weights`` (e.g. from :func:`sctrvae.tl.hedge`), a group's response is hedged
        toward the shared response, the mean of the other measured groups' responses:
        ``shared + w * (model - shared)``.

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
            Mass of the interval ``[lfc_lower, lfc_upper]``.
        batch_size
            Cells per minibatch (default: scvi-tools' ``settings.batch_size``).
        random_state
            Seed of the choice of cells when a group has more than ``max_cells``; the draws of
            ``z`` follow torch's global seed (``scvi.settings.seed``).
        key_added
            Also store ``{"params", "results"}`` in ``adata.uns[key_added]``.
        weights
            Per group, the share ``w`` of the model's own response to keep (the rest is the
            shared response); groups not named keep ``1``.
        check
            A :func:`sctrvae.tl.transfer_check` table of this model (its ``attrs["changes"]``
            over the same genes): calibrates the uncertainty of unmeasured groups.

        Returns
        -------
        One row per group and gene: ``lfc_mean`` (the response, hedged with ``weights``),
        ``lfc_std``, ``lfc_lower``, ``lfc_upper``, ``proba_de``, ``proba_up``, ``proba_down``,
        ``lfc_model`` (the model's response), ``lfc_shared`` (the mean measured response of the
        other groups), ``weight``, the mean normalised expressions ``scale_source`` and
        ``scale_target``, ``observed_lfc`` (the same ratio on the measured cells; NaN for a
        group without ``target`` cells), ``n_cells`` (source cells used), ``n_target_cells``
        (measured target cells) and ``pseudocounts``.

        Examples
        --------
        >>> df = model.differential_response(
        ...     adata, groupby="cell_type", source="control", target="stimulated"
        ... )
        >>> df[df.group == "CD4T"].nlargest(10, "proba_up")
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
            weights=weights,
            transfer_se=None if check is None else checked_transfer_se(check, groups, adata.n_vars),
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
