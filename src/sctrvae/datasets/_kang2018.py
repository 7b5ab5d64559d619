"""Kang et al. 2018 PBMCs, control vs IFN-β."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

#: Environment variable naming a local copy of the Kang 2018 AnnData.
KANG_PATH_ENV = "SCTRVAE_KANG_PATH"

# the ~25k-cell raw-count release distributed with pertpy (Heumos et al.), 24,673 cells × 15,706
# genes; pertpy itself pins no checksum, this SHA-256 is the one public benchmarks check it against
_URL = "https://figshare.com/ndownloader/files/34464122"
_SHA256 = "e6a5adac64dcdeb36eaba27db49b63e0c64bb0ed4a64c6705971506b41c39830"
_FILENAME = "kang_counts_25k.h5ad"
_CONDITION_NAMES = {"ctrl": "control", "stim": "stimulated"}
# the download's cell type names, spelled as in the scGen / trVAE release (and the README)
_CELL_TYPE_NAMES = {
    "B cells": "B",
    "CD4 T cells": "CD4T",
    "CD8 T cells": "CD8T",
    "CD14+ Monocytes": "CD14+Mono",
    "FCGR3A+ Monocytes": "FCGR3A+Mono",
    "Dendritic cells": "Dendritic",
    "NK cells": "NK",
}


def _rename(values, names: dict[str, str]):
    """``values`` as a categorical with ``names`` applied to its categories (order kept)."""
    values = values.astype("category")  # a categorical keeps its categories' order
    return values.cat.rename_categories(lambda c: names.get(str(c), str(c)))


def kang2018(
    path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> ad.AnnData:
    """Kang et al. 2018 PBMCs, control and IFN-β stimulated, with raw counts in ``X``.

    ``obs["condition"]`` is ``control`` / ``stimulated`` and ``obs["cell_type"]`` the annotated
    cell type (``"CD4T"``, ``"CD14+Mono"``, ``"B"``, ...), whichever release is read: the
    download's ``label`` column of ``ctrl`` / ``stim`` becomes ``condition``, and its cell type
    names (``"CD4 T cells"``, ...) are spelled as in the scGen release.

    Parameters
    ----------
    path
        A local ``.h5ad`` file. Default: the file named by ``$SCTRVAE_KANG_PATH`` if set, else
        the public ~25k-cell release (needs :mod:`pooch` and network), cached in ``cache_dir``.
        The download is checked against the release's SHA-256 (pooch raises on a mismatch).
    cache_dir
        Where a download is kept (default: pooch's cache folder for ``sctrvae``).
    """
    path = path or os.environ.get(KANG_PATH_ENV)
    if path is None:
        try:
            import pooch
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "Downloading needs pooch (pip install 'sctrvae[datasets]'); or pass a local "
                f"file with path= or ${KANG_PATH_ENV}."
            ) from err
        try:
            path = pooch.retrieve(
                _URL,
                known_hash=f"sha256:{_SHA256}",
                fname=_FILENAME,
                path=cache_dir or pooch.os_cache("sctrvae"),
            )
        except OSError as err:  # requests' connection errors are OSErrors
            raise ConnectionError(
                f"Could not download the Kang 2018 data from {_URL} ({err}). Without network, "
                f"pass a local .h5ad with kang2018(path=...) or set ${KANG_PATH_ENV}."
            ) from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Kang 2018 file at {path} (from path= or ${KANG_PATH_ENV}).")
    adata = ad.read_h5ad(path)
    if "condition" not in adata.obs and "label" in adata.obs:
        adata.obs["condition"] = _rename(adata.obs["label"], _CONDITION_NAMES)
    if "cell_type" in adata.obs:
        adata.obs["cell_type"] = _rename(adata.obs["cell_type"], _CELL_TYPE_NAMES)
    return adata
