import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

import sctrvae


def _download_like(path):
    """A tiny file laid out like the public release: ``label`` and long cell type names."""
    adata = ad.AnnData(
        X=sp.csr_matrix(np.ones((3, 2), dtype=np.float32)),
        obs={
            "label": ["ctrl", "stim", "ctrl"],
            "cell_type": ["CD4 T cells", "CD14+ Monocytes", "Megakaryocytes"],
        },
    )
    adata.write_h5ad(path)


def test_release_names_are_spelled_as_in_the_readme(tmp_path):
    _download_like(tmp_path / "kang.h5ad")
    adata = sctrvae.datasets.kang2018(tmp_path / "kang.h5ad")
    assert list(adata.obs["condition"]) == ["control", "stimulated", "control"]
    assert list(adata.obs["cell_type"]) == ["CD4T", "CD14+Mono", "Megakaryocytes"]


def test_without_network_the_error_names_the_local_routes(monkeypatch, tmp_path):
    import pooch

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.delenv("SCTRVAE_KANG_PATH", raising=False)
    monkeypatch.setattr(pooch, "retrieve", offline)
    with pytest.raises(ConnectionError, match=r"kang2018\(path=\.\.\.\).*SCTRVAE_KANG_PATH"):
        sctrvae.datasets.kang2018(cache_dir=tmp_path)


def test_the_download_is_checked_against_the_release_hash(monkeypatch, tmp_path):
    import pooch

    asked = {}

    def serve(url, known_hash, fname, path):
        asked.update(url=url, known_hash=known_hash)
        _download_like(tmp_path / "kang.h5ad")
        return str(tmp_path / "kang.h5ad")

    monkeypatch.delenv("SCTRVAE_KANG_PATH", raising=False)
    monkeypatch.setattr(pooch, "retrieve", serve)
    adata = sctrvae.datasets.kang2018(cache_dir=tmp_path)
    assert asked["url"].endswith("/34464122")
    assert asked["known_hash"] == (
        "sha256:e6a5adac64dcdeb36eaba27db49b63e0c64bb0ed4a64c6705971506b41c39830"
    )
    assert "CD4T" in adata.obs["cell_type"].cat.categories


def test_missing_local_file_names_the_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="SCTRVAE_KANG_PATH"):
        sctrvae.datasets.kang2018(tmp_path / "missing.h5ad")


def test_the_readme_cell_types_exist_in_the_local_file(kang_path):
    adata = sctrvae.datasets.kang2018(kang_path)
    types = set(adata.obs["cell_type"].cat.categories)
    assert {"CD4T", "CD14+Mono", "FCGR3A+Mono", "B", "NK", "CD8T", "Dendritic"} == types
    assert ((adata.obs.cell_type == "CD4T") & (adata.obs.condition == "control")).sum() > 100
