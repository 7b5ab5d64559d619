import copy
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi

import sctrvae

KANG_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared/data/kang_pbmc_ifnb_1975.h5ad"


@pytest.fixture(autouse=True)
def _seed():
    scvi.settings.seed = 0


@pytest.fixture(scope="session")
def kang_path() -> Path:
    path = Path(os.environ.get("SCTRVAE_KANG_PATH", KANG_DEFAULT))
    if not path.is_file():
        if os.environ.get("SCTRVAE_REQUIRE_DATA"):
            pytest.fail(f"SCTRVAE_REQUIRE_DATA is set but {path} does not exist.")
        pytest.skip(f"Kang data not found at {path} (set SCTRVAE_KANG_PATH).")
    return path


@pytest.fixture
def sim():
    return sctrvae.datasets.simulate(n_cells=600, n_genes=120, n_cell_types=3, seed=1)


@pytest.fixture(scope="module")
def trained():
    """A small model trained briefly on simulated data, with the data it was trained on."""
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=600, n_genes=120, n_cell_types=3, seed=1)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=32, n_latent=5)
    model.train(max_epochs=5, batch_size=64, enable_progress_bar=False)
    return model, adata


@pytest.fixture
def trained_copy(trained):
    """An independent copy of :func:`trained` (model and data) for a test that changes it."""
    return copy.deepcopy(trained)


# deep before/after comparison of an AnnData, for tests that nothing was changed or lost

#: Prefix of the obs columns and uns keys scvi-tools' setup_anndata adds by convention.
SCVI_PREFIX = "_scvi"


def take_snapshot(adata):
    """An independent deep copy of everything the comparison looks at."""
    return {
        "X": copy.deepcopy(adata.X),
        "layers": {k: copy.deepcopy(v) for k, v in adata.layers.items()},
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "uns": set(adata.uns),
        "is_view": adata.is_view,
    }


def assert_same_matrix(before, after, name):
    assert type(before) is type(after), f"{name}: type {type(before)} -> {type(after)}"
    if sp.issparse(before):
        assert before.format == after.format, name
        before, after = before.toarray(), after.toarray()
    before, after = np.asarray(before), np.asarray(after)
    assert before.dtype == after.dtype, f"{name}: dtype {before.dtype} -> {after.dtype}"
    np.testing.assert_array_equal(before, after, err_msg=name)


def check_unchanged(before, adata, scvi_keys=True, added_layers=(), added_obsm=(), added_uns=()):
    """Assert ``adata`` equals the ``before`` snapshot.

    ``scvi_keys=True`` ignores the ``_scvi_*`` obs columns and uns keys (scvi-tools' convention
    for registered data); ``added_*`` are the keys the caller asked to be written.
    """
    after = take_snapshot(adata)
    assert after["is_view"] == before["is_view"]
    assert_same_matrix(before["X"], after["X"], "X")
    assert set(after["layers"]) == set(before["layers"]) | set(added_layers)
    for key, value in before["layers"].items():
        assert_same_matrix(value, after["layers"][key], f"layers[{key!r}]")
    assert set(after["obsm"]) == set(before["obsm"]) | set(added_obsm)
    for key, value in before["obsm"].items():
        assert_same_matrix(value, after["obsm"][key], f"obsm[{key!r}]")
    obs = after["obs"]
    uns = after["uns"]
    if scvi_keys:
        obs = obs.drop(columns=[c for c in obs.columns if c.startswith(SCVI_PREFIX)])
        uns = {k for k in uns if not k.startswith(SCVI_PREFIX)}
        before_uns = {k for k in before["uns"] if not k.startswith(SCVI_PREFIX)}
        before_obs = before["obs"].drop(
            columns=[c for c in before["obs"].columns if c.startswith(SCVI_PREFIX)]
        )
    else:
        before_uns, before_obs = before["uns"], before["obs"]
    pd.testing.assert_frame_equal(before_obs, obs)
    pd.testing.assert_frame_equal(before["var"], after["var"])
    assert uns == before_uns | set(added_uns)


@pytest.fixture
def snapshot():
    """``snapshot(adata)``: deep copy of X, layers, obs, var, obsm and the uns keys."""
    return take_snapshot


@pytest.fixture
def assert_unchanged():
    """``assert_unchanged(before, adata, scvi_keys=True, added_layers=(), added_obsm=(), \
added_uns=())``."""
    return check_unchanged
