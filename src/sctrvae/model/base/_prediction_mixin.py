"""``predict()``: counterfactual expression of cells decoded under another condition."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import anndata as ad
import numpy as np
import torch

from ..._constants import (
    CALIBRATION_DRAWS,
    CALIBRATION_UNS,
    LARGE_PREDICTION_BYTES,
    PREDICTION_LAYER,
    PREDICTION_UNS,
    READOUTS,
    Readout,
)
from ..._utils import blank_layer, log_expression, write_layer
from ..._version import __version__
from ...data._covariates import batch_code
from .._calibration import ReconstructionError
from .._counterfactual import decoded_batches, fill, prediction_anndata
from .._rollback import restores_adata_on_failure
from .._validation import check_indices

#: What each row of the layer that ``_predict`` fills holds; see there.
PerCell = Literal["readout", "expression", "log_normalized"]


def chosen_readout(readout: str | None, n_samples: int | None) -> str:
    """``predict``'s readout: ``readout``, else ``"sampled"`` when ``n_samples`` is given."""
    if readout is not None:
        return readout
    return "sampled" if n_samples else "mean"


def check_returned(return_anndata: bool, key_added: str | None) -> None:
    """Refuse ``return_anndata=False`` without ``key_added``: nothing would be kept."""
    if not return_anndata and key_added is None:
        raise ValueError(
            "return_anndata=False returns nothing: pass key_added to write the readout into "
            "adata.layers[key_added]."
        )


def warn_if_large(n_samples: int, n_cells: int, n_genes: int, likelihood: str) -> None:
    """Warn when the AnnData ``predict`` returns would hold over ``LARGE_PREDICTION_BYTES``."""
    # float32 X and log-normalised layer, and the proportions of count likelihoods
    arrays = 2 if likelihood == "normal" else 3
    size = arrays * max(n_samples, 1) * n_cells * n_genes * 4
    if size > LARGE_PREDICTION_BYTES:
        warnings.warn(
            f"predict returns {max(n_samples, 1)} row(s) per cell for {n_cells} cells × "
            f"{n_genes} genes: {arrays} float32 arrays of {size / arrays / 2**30:.1f} GiB each. "
            "To keep only the readout, one row per cell, pass key_added=... and "
            "return_anndata=False.",
            UserWarning,
            stacklevel=6,
        )


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
        return_anndata: bool = True,
    ) -> ad.AnnData | None:
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
            most accurate readout of the Kang benchmark. The cells are decoded twice, one
            minibatch at a time: first under their own condition (the corrections' sums), then
            under the target (the draws, corrected as they come). A correction is a group mean,
            so the first pass draws per cell only what gives each group at least 20,000
            reconstructed draws (all ``n_samples`` up to 2,000 cells per group, one from 20,000),
            and reconstructs no more of a group's cells than that takes (20,000 of a larger
            group's, at random).
        n_samples
            Draws per cell of ``"sampled"`` (default 1) and ``"calibrated"``. The calibrated
            readout is read as group means, so by default it draws per cell what gives each
            group (``groupby``; all predicted cells without it) at least 20,000 draws: 10 up
            to 2,000 cells, fewer above, one from 20,000 (each row of a large group's layer
            then averages fewer draws; its group mean is as precise). Pass ``n_samples`` to
            draw that many per cell whatever the group sizes.
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
            version). An existing layer of that name is replaced. The layer is dense float32,
            ``adata.n_obs × adata.n_vars``: a calibrated cell's values are shifted
            log-expression, zero only where clipped, so a sparse layer would not be smaller.
            Each minibatch's rows are written as it is decoded, so the layer needs no more
            memory than itself, whatever ``n_samples``.
        target_batch
            Decode every cell as this category of the ``batch_key`` registered at setup (e.g.
            another donor). Default: each cell keeps its own batch and covariates.
        return_anndata
            ``False`` (with ``key_added``): write the layer only and return ``None``. The
            returned AnnData holds every draw of every cell, three float32 arrays of
            ``max(n_samples, 1) × n_cells × n_genes`` (120 bytes per cell and gene for 10
            calibrated draws: 12 GB for 50,000 cells × 2,000 genes); the layer holds
            one row per cell (4 bytes per cell and gene). For large data use
            ``key_added=..., return_anndata=False``: time and memory then grow linearly in
            cells, by one minibatch of draws at a time (``docs/large-data.md`` has the
            measured constants). A warning names this option when the AnnData would exceed
            4 GiB.

        Returns
        -------
        ``None`` with ``return_anndata=False``. Otherwise an AnnData of the predicted cells
        (``n_samples × n_cells`` rows stacked by draw for ``"sampled"`` / ``"calibrated"``, draw
        number in ``obs["sctrvae_draw"]``), with the same ``var``, ``obs`` copied and
        ``obs[condition_key]`` set to the target. ``.X``: expected counts (``"mean"``) or
        sampled counts; ``.layers["normalized"]``: predicted proportions, each row summing to 1
        (count likelihoods); ``.layers["log_normalized"]``: the readout, log-normalised, which
        :func:`sctrvae.metrics.score_prediction` and the plots in ``sctrvae.pl`` read by
        default; ``.uns["sctrvae_prediction"]``: the record above;
        ``.uns["sctrvae_calibration"]`` (``"calibrated"``): the corrections, groups × genes.
        """
        check_returned(return_anndata, key_added)
        pred, layer, record = self._predict(
            adata,
            indices,
            target_condition,
            readout,
            n_samples,
            groupby,
            library_size,
            batch_size,
            key_added,
            target_batch,
            return_anndata,
            per_cell=None if key_added is None else "readout",
        )
        if key_added is not None:
            write_layer(self.adata if adata is None else adata, layer, key_added, record)
        return pred

    def _predict(
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
        return_anndata: bool = True,
        per_cell: PerCell | None = None,
    ) -> tuple[ad.AnnData | None, np.ndarray | None, dict]:
        """:meth:`predict` but the write: the AnnData, a layer of ``per_cell``, the record.

        ``per_cell``: what the layer's row of each predicted cell holds (NaN elsewhere):
        ``"readout"``, what ``key_added`` writes; ``"expression"``, the mean over draws of the
        counts (the mean readout's expected counts); ``"log_normalized"``, the mean over draws of
        the log-normalised readout. ``None``: no layer. ``key_added`` is only checked here.
        """
        check_indices(indices)
        if target_condition is None:
            raise ValueError(f"Pass target_condition, one of {self.conditions}.")
        target = self._condition_code(target_condition)
        batch = None if target_batch is None else batch_code(self.registry_, target_batch)
        readout = chosen_readout(readout, n_samples)
        requested = n_samples
        n_samples = self._check_readout(readout, n_samples, groupby, library_size, key_added)
        self._check_if_trained(warn=False)
        adata, selected, computed = self._prepare(adata, indices, key_added)
        if groupby is not None and groupby not in adata.obs:
            raise KeyError(
                f"groupby={groupby!r} is not a column of adata.obs; pass the column that groups "
                "the cells (e.g. the cell type), or None for one correction."
            )
        likelihood = self.module.likelihood

        def decode(target: int | None, draws: int, cells: np.ndarray = computed, **kwargs):
            loader = self._make_data_loader(adata, indices=cells, batch_size=batch_size)
            return decoded_batches(
                self.module,
                loader,
                target,
                draws,
                library_size=None if library_size == "observed" else float(library_size),
                **kwargs,
            )

        calibration = None
        if READOUTS[readout].reads_reconstruction:
            # first pass: the corrections, from the cells decoded under their own condition
            calibration = ReconstructionError(
                None if groupby is None else adata.obs[groupby].iloc[selected],
                np.searchsorted(computed, selected),
                computed.size,
                adata.n_vars,
            )
            draws = calibration.draws_needed(n_samples, CALIBRATION_DRAWS)
            if requested is None:  # a group's readout is read as its mean: as many draws
                n_samples = draws
            # and so is a correction: a large group's comes from as many of its cells
            reconstructed = calibration.reconstructed_cells(-(-CALIBRATION_DRAWS // draws))
            for cells, out in decode(None, draws, computed[reconstructed], normalized=False):
                calibration.add(reconstructed[cells], out["observed"], out["expression"])
        if return_anndata:
            warn_if_large(n_samples, selected.size, adata.n_vars, likelihood)

        def readout_values(cells: slice, expression: np.ndarray) -> np.ndarray:
            """A minibatch's readout, log-normalised (float32, the shape of ``expression``)."""
            if calibration is not None:
                return calibration.calibrate(cells, expression)
            return log_expression(expression, likelihood).reshape(expression.shape)

        def cell_rows(out: dict[str, np.ndarray]) -> np.ndarray:
            """A minibatch's rows of the layer ``per_cell``."""
            if per_cell == "readout" and readout == "sampled":
                return log_expression(out["expression"].mean(0), likelihood)
            key = "expression" if per_cell == "expression" else PREDICTION_LAYER
            return out[key].mean(0) if n_samples else out[key]

        reads_log = per_cell == "log_normalized" or (per_cell == "readout" and readout != "sampled")
        layer = None if per_cell is None else blank_layer(adata)
        arrays: dict[str, np.ndarray] = {}
        # second pass: the predictions, one minibatch at a time
        for cells, out in decode(target, n_samples, batch=batch, normalized=return_anndata):
            del out["observed"]
            if return_anndata or reads_log:
                out[PREDICTION_LAYER] = readout_values(cells, out["expression"])
            if layer is not None:
                layer[computed[cells]] = cell_rows(out)
            if return_anndata:
                fill(arrays, cells, out, computed.size)
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
        if not return_anndata:
            return None, layer, record
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
        if calibration is not None:
            pred.uns[CALIBRATION_UNS] = calibration.table(adata.var_names)
        pred.uns[PREDICTION_UNS] = record
        return pred, layer, record

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
