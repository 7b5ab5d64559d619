import os
from pathlib import Path

import pytest
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
