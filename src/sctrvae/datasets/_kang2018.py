"""Kang et al. 2018 PBMCs, control vs IFN-β."""

from __future__ import annotations

import os
from pathlib import Path

import anndata as ad

#: Environment variable naming a local copy of the Kang 2018 AnnData.
KANG_PATH_ENV = "SCTRVAE_KANG_PATH"

# the ~25k-cell raw-count release distributed with pertpy (Heumos et al.)
_URL = "https://figshare.com/ndownloader/files/34464122"
_FILENAME = "kang_counts_25k.h5ad"
_CONDITION_NAMES = {"ctrl": "control", "stim": "stimulated"}


def kang2018(
    path: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None
) -> ad.AnnData:
    """Kang et al. 2018 PBMCs, control and IFN-β stimulated, with raw counts in ``X``.

    ``obs["condition"]`` is ``control`` / ``stimulated`` and ``obs["cell_type"]`` the annotated
    cell type, whichever release is read (the download's ``label`` column of ``ctrl`` / ``stim``
    is renamed).

    Parameters
    ----------
    path
        A local ``.h5ad`` file. Default: the file named by ``$SCTRVAE_KANG_PATH`` if set, else
        the public ~25k-cell release (needs :mod:`pooch` and network), cached in ``cache_dir``.
    cache_dir
        Where a download is kept (default: pooch's cache folder for ``sctrvae``).
    """
    path = path or os.environ.get(KANG_PATH_ENV)
    if path is None:
        try:
            import pooch
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("Downloading needs pooch: pip install 'sctrvae[datasets]'.") from err
        path = pooch.retrieve(
            _URL, known_hash=None, fname=_FILENAME, path=cache_dir or pooch.os_cache("sctrvae")
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No Kang 2018 file at {path}.")
    adata = ad.read_h5ad(path)
    if "condition" not in adata.obs and "label" in adata.obs:
        adata.obs["condition"] = (
            adata.obs["label"]
            .astype(str)
            .map(lambda c: _CONDITION_NAMES.get(c, c))
            .astype("category")
        )
    return adata
