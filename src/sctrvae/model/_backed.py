"""Checks that a backed AnnData's file still holds the cells and genes the AnnData describes."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd


def _stored_index(group: h5py.Group) -> pd.Index:
    """The names stored in an ``obs`` / ``var`` group of an ``.h5ad`` file (nothing else read)."""
    return pd.Index(ad.io.read_elem(group[group.attrs["_index"]])).astype(str)


def check_backed_file(adata: ad.AnnData) -> None:
    """Raise if the file behind a backed AnnData no longer matches its cells and genes.

    A backed AnnData keeps ``obs`` and ``var`` in memory and reads the matrix from the file,
    reopening it by name when the handle was closed. A file rewritten meanwhile (by another
    process, or by the user under the same name) would then be read row by row as if it held
    the same cells and genes: the shape of the matrix and the stored cell and gene names are
    compared with the AnnData's instead. In-memory AnnData pass unchecked.
    """
    if not (isinstance(adata, ad.AnnData) and adata.isbacked):
        return
    if adata.is_view:  # the file holds the whole AnnData the view selects from
        adata = adata._adata_ref
    if not adata.file.is_open:  # as reading cells does: opened again by name
        adata.file.open()
    stored = adata.file["X"]
    shape = tuple(stored.attrs["shape"]) if isinstance(stored, h5py.Group) else stored.shape
    problem = None
    if shape != adata.shape:
        problem = (
            f"its matrix has {shape[0]} cells x {shape[1]} genes, the AnnData "
            f"{adata.n_obs} x {adata.n_vars}"
        )
    else:
        for axis, names in (("var", adata.var_names), ("obs", adata.obs_names)):
            names = names.astype(str)
            stored_names = _stored_index(adata.file[axis])
            if not stored_names.equals(names):
                differ = np.flatnonzero(stored_names != names)
                problem = (
                    f"its {axis}_names differ from the AnnData's at {differ.size} positions "
                    f"(first: {names[differ[0]]!r} is now {stored_names[differ[0]]!r})"
                )
                break
    if problem is not None:
        raise ValueError(
            f"The file {adata.filename} behind this backed AnnData changed after it was "
            f"opened: {problem}. Reading it would give the wrong cells or genes. Open it "
            "again with `ad.read_h5ad(path, backed='r')` (and set it up again)."
        )
