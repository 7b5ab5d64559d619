"""``predict()``: counterfactual expression of cells decoded under another condition."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import torch

from ..._constants import (
    CALIBRATION_UNS,
    PREDICTION_LAYER,
    PREDICTION_UNS,
    READOUTS,
    Readout,
)
from ..._utils import log_expression, write_layer
from ..._version import __version__
from ...data._covariates import batch_code
from .._calibration import calibrate_draws
from .._counterfactual import decode_counterfactual, prediction_anndata
from .._rollback import restores_adata_on_failure
from .._validation import check_indices


class PredictionMixin:
    """Counterfactual prediction with three readouts, optionally written into the user's AnnData."""

    @restores_adata_on_failure
    @torch.inference_mode()
    def predict(
        self,
        adata: ad.AnnData | None = None,
        indices: Sequence[int] | None = None,
        target_condition: str | None = None,
        readout: Readout | None = None,
        n_samples: int | None = None,
        groupby: str | None = None,
        library_size: Literal["observed"] | float = "observed",
        batch_size: int | None = None,
        key_added: str | None = None,
        target_batch: str | None = None,
    ) -> ad.AnnData:
        """Counterfactual expression: encode with each cell's condition, decode with the target.

        The decoding is scvi-tools' ``transform_batch`` path (that of
        ``get_normalized_expression`` and ``posterior_predictive_sample``), read into an
        AnnData.

        Parameters
        ----------
        adata
            AnnData with the training genes (e.g. only the control cells of one cell type);
            default: the model's.
        indices
            Cells to predict; default all.
        target_condition
            Condition to transfer the cells to; one of :attr:`conditions`.
        readout
            Default: ``"sampled"`` when ``n_samples`` is given, else ``"mean"``.
            ``"mean"``: posterior mean of ``z`` and the likelihood's mean (deterministic).
            ``"sampled"``: ``n_samples`` draws of ``z`` and of the likelihood per cell:
            realistic counts with cell-to-cell variance.
            ``"calibrated"``: the sampled draws, corrected by the model's reconstruction error
            on the cells themselves (count likelihoods). The cells are also decoded under their
            own condition, with the same number of draws; for each gene, the mean log-normalised
            expression of the observed cells minus that of their reconstruction is added to
            every predicted draw (clipped at 0). The decoder's error on a population it never
            saw in the target condition is thereby assumed to be the one it makes on that
            population's observed cells: the model predicts the change, the data the level. The
            most accurate readout of the Kang benchmark.
        n_samples
            Draws per cell of ``"sampled"`` (default 1) and ``"calibrated"`` (default 10).
        groupby
            ``"calibrated"`` only: column of ``adata.obs`` (e.g. the cell type) with one
            correction per group; default one correction for all cells.
        library_size
            ``"observed"``: each cell's own total count; a number: the same total for every cell.
        batch_size
            Cells per forward pass.
        key_added
            Also write the readout into ``adata.layers[key_added]`` of the passed AnnData,
            log-normalised (``log1p(x / total × 1e4)``), one row per cell: the mean readout;
            the log-normalised mean of the sampled counts; the mean of the calibrated draws.
            Rows of cells not in ``indices`` are NaN. ``adata.uns[key_added]`` records what was
            written (readout, target condition, n_samples, groupby, library_size, sctrvae
            version). An existing layer of that name is replaced.
        target_batch
            Decode every cell as this category of the ``batch_key`` registered at setup (e.g.
            another donor). Default: each cell keeps its own batch and covariates.

        Returns
        -------
        AnnData of the predicted cells (``n_samples × n_cells`` rows stacked by draw for
        ``"sampled"`` / ``"calibrated"``, draw number in ``obs["sctrvae_draw"]``), with the same
        ``var``, ``obs`` copied and ``obs[condition_key]`` set to the target. ``.X``: expected
        counts (``"mean"``) or sampled counts; ``.layers["normalized"]``: predicted
        proportions, each row summing to 1 (count likelihoods); ``.layers["log_normalized"]``:
        the readout, log-normalised, which :func:`sctrvae.metrics.score_prediction` and the
        plots in ``sctrvae.pl`` read by default; ``.uns["sctrvae_prediction"]``: the record above;
        ``.uns["sctrvae_calibration"]`` (``"calibrated"``): the corrections, groups × genes.
        """
        check_indices(indices)
        if target_condition is None:
            raise ValueError(f"Pass target_condition, one of {self.conditions}.")
        target = self._condition_code(target_condition)
        batch = None if target_batch is None else batch_code(self.registry_, target_batch)
        if readout is None:
            readout = "sampled" if n_samples else "mean"
        n_samples = self._check_readout(readout, n_samples, groupby, library_size, key_added)
        self._check_if_trained(warn=False)
        adata, selected, computed = self._prepare(adata, indices, key_added)
        if groupby is not None and groupby not in adata.obs:
            raise KeyError(
                f"groupby={groupby!r} is not a column of adata.obs; pass the column that groups "
                "the cells (e.g. the cell type), or None for one correction."
            )
        arrays = decode_counterfactual(
            self.module,
            self._make_data_loader(adata, indices=computed, batch_size=batch_size),
            computed.size,
            target,
            n_samples,
            library_size=None if library_size == "observed" else float(library_size),
            with_reconstruction=READOUTS[readout].reads_reconstruction,
            batch=batch,
        )
        if not np.array_equal(computed, selected):
            position = np.searchsorted(computed, selected)
            arrays = {k: v[..., position, :] for k, v in arrays.items()}
        pred = prediction_anndata(
            adata.obs.iloc[selected],
            adata.var,
            arrays,
            self.condition_key,
            self.conditions,
            target_condition,
            n_samples,
        )
        record = {
            "readout": readout,
            "target_condition": str(target_condition),
            "n_samples": n_samples,
            "library_size": library_size,
            "sctrvae_version": __version__,
        }
        if target_batch is not None:
            record["target_batch"] = str(target_batch)
        if groupby is not None:
            record["groupby"] = groupby
        likelihood = self.module.likelihood
        if READOUTS[readout].reads_reconstruction:
            groups = None if groupby is None else adata.obs[groupby].iloc[selected]
            log_values, corrections = calibrate_draws(
                arrays["observed"], arrays["expression"], arrays["reconstruction"], groups
            )
            corrections.columns = adata.var_names
            pred.uns[CALIBRATION_UNS] = corrections
            per_cell = log_values.reshape(n_samples, selected.size, -1).mean(0)
        else:
            log_values = log_expression(pred.X, likelihood)
            mean = arrays["expression"] if n_samples == 0 else arrays["expression"].mean(0)
            per_cell = log_expression(mean, likelihood)
        pred.layers[PREDICTION_LAYER] = log_values
        pred.uns[PREDICTION_UNS] = record
        if key_added is not None:
            write_layer(adata, selected, per_cell, key_added, record)
        return pred

    def _check_readout(
        self,
        readout: str,
        n_samples: int | None,
        groupby: str | None,
        library_size: str | float,
        key_added: str | None,
    ) -> int:
        """Validate ``predict``'s readout arguments; returns the number of draws (0: the mean)."""
        if readout not in READOUTS:
            raise ValueError(f"readout must be one of {list(READOUTS)}, got {readout!r}.")
        spec = READOUTS[readout]
        drawn = [name for name, other in READOUTS.items() if other.draws]
        if spec.draws == 0 and n_samples:
            raise ValueError(
                f"readout={readout!r} is deterministic; pass n_samples with a drawn readout, one "
                f"of {drawn}."
            )
        n_samples = spec.draws if n_samples is None else n_samples
        if spec.draws and not (isinstance(n_samples, int) and n_samples > 0):
            raise ValueError(f"readout={readout!r} needs n_samples >= 1, got {n_samples!r}.")
        if spec.reads_reconstruction and self.module.likelihood == "normal":
            raise ValueError(f"readout={readout!r} needs a count likelihood ('nb' or 'zinb').")
        if groupby is not None and not spec.reads_reconstruction:
            raise ValueError("groupby sets the groups of readout='calibrated' only.")
        if library_size != "observed" and not (
            isinstance(library_size, int | float) and library_size > 0
        ):
            raise ValueError("library_size must be 'observed' or a positive number.")
        if key_added is not None and key_added == self.registry_["setup_args"]["layer"]:
            raise ValueError(
                f"key_added={key_added!r} is the input count layer; choose another name so the "
                "counts are not overwritten."
            )
        return n_samples
