"""Reconstruction calibration: correct predicted draws by the model's error on the cells' data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from .._utils import draws_per_cell, log1p_normalize, sums_by_code


class ReconstructionError:
    """Per group and gene: observed minus reconstructed mean log-normalised expression.

    Accumulated over minibatches (:meth:`add`), so that no array holds more than one minibatch
    of draws; then :meth:`calibrate` shifts predicted draws, one minibatch at a time. Cells are
    those of the loader, in its order; each cell counts as often as it was selected. A group's
    correction is the mean over the cells added (all, or :meth:`reconstructed_cells`).

    Parameters
    ----------
    labels
        Group of each selected cell (one correction per group), in the order of the selection;
        ``None``: one correction, named ``"all"``, for all cells.
    positions
        Position of each selected cell among the ``n_cells`` cells of the loader (a cell
        selected twice counts twice).
    n_cells
        Cells in the loader.
    n_genes
        Genes.
    """

    def __init__(
        self,
        labels: pd.Series | None,
        positions: np.ndarray,
        n_cells: int,
        n_genes: int,
    ):
        labels = (
            np.full(positions.size, "all") if labels is None else np.asarray(labels).astype(str)
        )
        # groups in the order they first appear in the selection
        codes, self.groups = pd.factorize(labels)
        self._codes = np.empty(n_cells, dtype=np.intp)
        self._codes[positions] = codes
        self._weights = np.bincount(positions, minlength=n_cells).astype(np.float64)
        self._observed = np.zeros((self.groups.size, n_genes))
        self._reconstructed = np.zeros((self.groups.size, n_genes))
        self._added = np.zeros(self.groups.size)  # cells added per group, weighted
        self._shift: np.ndarray | None = None

    @property
    def cells_per_group(self) -> np.ndarray:
        """Cells of each group (a cell selected twice counts twice)."""
        return np.bincount(self._codes, weights=self._weights, minlength=self.groups.size)

    def draws_needed(self, n_samples: int, per_group: int) -> int:
        """Reconstructed draws per cell that give every group ``per_group`` draws.

        At most ``n_samples`` and at least 1 (:func:`draws_per_cell`); the smallest group decides.
        """
        return draws_per_cell(int(self.cells_per_group.min()), per_group, n_samples)

    def reconstructed_cells(self, per_group: int) -> np.ndarray:
        """Positions, among the loader's cells, of those to reconstruct (increasing).

        Every cell of a group of up to ``per_group`` cells; of a larger group, ``per_group`` of
        its cells at random (torch's generator, which ``scvi.settings.seed`` seeds): its
        correction is a mean, as precise from that many as from all.
        """
        kept = []
        for code in range(self.groups.size):
            cells = np.flatnonzero(self._codes == code)
            if cells.size > per_group:
                cells = cells[torch.randperm(cells.size)[:per_group].numpy()]
            kept.append(cells)
        return np.sort(np.concatenate(kept))

    def _sum_by_group(self, cells: slice | np.ndarray, values: np.ndarray) -> np.ndarray:
        """Weighted sums of per-cell ``values`` (``(cells, genes)``), one row per group."""
        return sums_by_code(values, self._codes[cells], self.groups.size, self._weights[cells])

    def add(
        self,
        cells: slice | np.ndarray,
        observed: np.ndarray | sp.spmatrix,
        reconstruction: np.ndarray,
    ) -> None:
        """Add the loader's ``cells`` (a slice or positions): their counts and reconstructions.

        ``observed``: ``(cells, genes)``; ``reconstruction``: draws of counts decoded under the
        cells' own condition, ``(draws, cells, genes)``.
        """
        n_draws, n, n_genes = reconstruction.shape
        self._observed += self._sum_by_group(cells, log1p_normalize(observed))
        reconstructed = log1p_normalize(reconstruction.reshape(-1, n_genes), np.float32)
        # per cell, the mean over its draws
        per_cell = reconstructed.reshape(n_draws, n, n_genes).mean(0, dtype=np.float64)
        self._reconstructed += self._sum_by_group(cells, per_cell)
        self._added += np.bincount(
            self._codes[cells], weights=self._weights[cells], minlength=self.groups.size
        )
        self._shift = None

    @property
    def shift(self) -> np.ndarray:
        """The corrections, ``(groups, genes)``: observed minus reconstructed group means."""
        if self._shift is None:
            self._shift = (self._observed - self._reconstructed) / self._added[:, None]
        return self._shift

    def table(self, genes: pd.Index) -> pd.DataFrame:
        """The corrections as a table: groups × ``genes``."""
        return pd.DataFrame(self.shift, index=pd.Index(self.groups), columns=genes)

    def calibrate(self, cells: slice, predicted: np.ndarray) -> np.ndarray:
        """Predicted draws of the loader's ``cells`` in log-normalised space, shifted.

        ``predicted``: draws of counts decoded under the target condition, ``(draws, cells,
        genes)``. Returns ``log1p(x / total × 1e4)`` plus the correction of each cell's group,
        clipped at 0, float32, of the same shape.
        """
        n_draws, n, n_genes = predicted.shape
        corrected = log1p_normalize(predicted.reshape(-1, n_genes), np.float32)
        corrected = corrected.reshape(n_draws, n, n_genes)
        corrected += self.shift[self._codes[cells]].astype(np.float32)
        return np.clip(corrected, 0.0, None, out=corrected)
