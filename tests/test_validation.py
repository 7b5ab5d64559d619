"""Bad input gets a clear error at the call that receives it, and the AnnData is left intact."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import sctrvae
from sctrvae import TRVAEModel
from sctrvae.model import _validation as validation


def small(n_cells=120, n_genes=30, seed=0, **kwargs):
    return sctrvae.datasets.simulate(n_cells=n_cells, n_genes=n_genes, seed=seed, **kwargs)


def set_value(adata, cell, gene, value):
    x = adata.X.toarray()
    x[cell, gene] = value
    adata.X = sp.csr_matrix(x)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_setup_rejects_nan_and_inf(value, snapshot, assert_unchanged):
    adata = small()
    set_value(adata, 3, 4, value)
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"adata.X contains 1 NaN or infinite values"):
        TRVAEModel.setup_anndata(adata, condition_key="condition")
    assert_unchanged(before, adata, scvi_keys=False)


def test_setup_checks_the_given_layer_and_that_it_exists():
    adata = small()
    adata.layers["counts"] = adata.X.toarray()
    adata.layers["counts"][0, 0] = np.nan
    with pytest.raises(ValueError, match=r"adata.layers\['counts'\] contains 1 NaN"):
        TRVAEModel.setup_anndata(adata, condition_key="condition", layer="counts")
    with pytest.raises(KeyError, match=r"layer .raw. is not in adata\.layers"):
        TRVAEModel.setup_anndata(adata, condition_key="condition", layer="raw")


def test_negative_counts_are_rejected_at_model_init():
    adata = small()
    set_value(adata, 0, 0, -1.0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    with pytest.raises(ValueError, match=r"negative values.*layer="):
        TRVAEModel(adata)


def test_zero_count_cells_are_rejected_for_count_likelihoods_only():
    adata = small()
    x = adata.X.toarray()
    x[[5, 9]] = 0
    adata.X = sp.csr_matrix(x)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    with pytest.raises(ValueError, match=r"2 cells have zero total counts.*\[5, 9\].*filter_cells"):
        TRVAEModel(adata, n_hidden=8)
    with pytest.raises(ValueError, match="2 cells have zero total counts"):
        TRVAEModel(adata, n_hidden=8, likelihood="zinb")
    model = TRVAEModel(adata, n_hidden=8, likelihood="normal")
    assert model.module.likelihood == "normal"


def test_condition_column_with_missing_values(snapshot, assert_unchanged):
    adata = small()
    adata.obs["partial"] = adata.obs["condition"].astype(object)
    adata.obs.iloc[[1, 2, 3], adata.obs.columns.get_loc("partial")] = np.nan
    adata.obs["empty"] = pd.Categorical([np.nan] * adata.n_obs, categories=["a", "b"])
    before = snapshot(adata)
    with pytest.raises(ValueError, match=r"missing for 3 of 120 cells.*notna\(\)"):
        TRVAEModel.setup_anndata(adata, condition_key="partial")
    with pytest.raises(ValueError, match=r"'empty'\] is empty \(all values are missing\)"):
        TRVAEModel.setup_anndata(adata, condition_key="empty")
    with pytest.raises(KeyError, match=r"'treatment' is not a column of adata\.obs"):
        TRVAEModel.setup_anndata(adata, condition_key="treatment")
    assert_unchanged(before, adata, scvi_keys=False)


def test_condition_with_one_cell_is_an_error_and_with_few_cells_a_warning():
    adata = small(n_cells=200)
    stimulated = np.flatnonzero(adata.obs["condition"] == "stimulated")
    lone = adata[np.r_[np.flatnonzero(adata.obs["condition"] == "control"), stimulated[:1]]].copy()
    TRVAEModel.setup_anndata(lone, condition_key="condition")
    model = TRVAEModel(lone, n_hidden=8, n_latent=2)
    with pytest.raises(ValueError, match=r"fewer than 2 cells.*\{'stimulated': 1\}"):
        model.train(max_epochs=1)
    few = adata[np.r_[np.flatnonzero(adata.obs["condition"] == "control"), stimulated[:5]]].copy()
    TRVAEModel.setup_anndata(few, condition_key="condition")
    model = TRVAEModel(few, n_hidden=8, n_latent=2)
    with pytest.warns(UserWarning, match=r"fewer than 10 cells: \{'stimulated': 5\}"):
        model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert model.is_trained_


def write_backed(adata, path):
    adata.write_h5ad(path)
    return ad.read_h5ad(path, backed="r")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_backed_anndata_is_checked_for_nan_block_by_block(tmp_path, monkeypatch, value):
    # blocks of 3 rows: the bad value sits in a later block than the first
    monkeypatch.setattr(validation, "_CHUNK", 3 * 30)
    adata = small()
    set_value(adata, 100, 4, value)
    backed = write_backed(adata, tmp_path / "a.h5ad")
    with pytest.raises(ValueError, match=r"adata.X contains 1 NaN or infinite values"):
        TRVAEModel.setup_anndata(backed, condition_key="condition")
    backed.file.close()


@pytest.mark.parametrize(("value", "message"), [(-1.0, "negative"), (0.5, "non-integer")])
def test_backed_anndata_is_checked_for_counts_block_by_block(tmp_path, monkeypatch, value, message):
    monkeypatch.setattr(validation, "_CHUNK", 3 * 30)
    adata = small()
    set_value(adata, 100, 4, value)
    backed = write_backed(adata, tmp_path / "a.h5ad")
    TRVAEModel.setup_anndata(backed, condition_key="condition")
    with pytest.raises(ValueError, match=rf"adata.X has {message} values"):
        TRVAEModel(backed)
    backed.file.close()


def test_backed_cells_with_zero_counts_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(validation, "_CHUNK", 3 * 30)
    adata = small()
    x = adata.X.toarray()
    x[[7, 110]] = 0
    adata.X = sp.csr_matrix(x)
    backed = write_backed(adata, tmp_path / "a.h5ad")
    TRVAEModel.setup_anndata(backed, condition_key="condition")
    with pytest.raises(ValueError, match=r"2 cells have zero total counts.*\[7, 110\]"):
        TRVAEModel(backed)
    backed.file.close()


def test_setup_rejects_a_view_without_touching_it(snapshot, assert_unchanged):
    view = small()[:60]
    before = snapshot(view)
    with pytest.raises(ValueError, match=r"view.*adata\[mask\].copy\(\)"):
        TRVAEModel.setup_anndata(view, condition_key="condition")
    assert_unchanged(before, view, scvi_keys=False)


def test_predict_on_a_view_leaves_the_view_alone(trained, snapshot, assert_unchanged):
    model, adata = trained
    mask = (adata.obs["condition"] == "control").to_numpy()
    view = adata[mask]
    before = snapshot(view)
    pred = model.predict(view, target_condition="stimulated")
    latent = model.get_latent_representation(view)
    assert view.is_view
    assert_unchanged(before, view, scvi_keys=False)
    expected = model.predict(indices=np.flatnonzero(mask), target_condition="stimulated")
    np.testing.assert_allclose(pred.X, expected.X, rtol=1e-5)
    np.testing.assert_allclose(latent, model.get_latent_representation()[mask], rtol=1e-5)
    with pytest.raises(ValueError, match=r"view.*key_added"):
        model.predict(view, target_condition="stimulated", key_added="pred")
    assert_unchanged(before, view, scvi_keys=False)


def test_key_added_may_not_overwrite_the_input_layer(snapshot, assert_unchanged):
    adata = small()
    adata.layers["counts"] = adata.X.copy()
    TRVAEModel.setup_anndata(adata, condition_key="condition", layer="counts")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    model.is_trained_ = True  # the check comes before any computation
    before = snapshot(adata)
    with pytest.raises(ValueError, match="key_added='counts' is the input count layer"):
        model.predict(target_condition="stimulated", key_added="counts")
    assert_unchanged(before, adata, scvi_keys=True)


def genes_reordered(adata):
    return adata[:, adata.var_names[::-1]].copy()


def genes_missing(adata):
    return adata[:, adata.var_names[3:]].copy()


def genes_extra(adata):
    extra = ad.AnnData(
        sp.csr_matrix((adata.n_obs, 2), dtype=np.float32),
        obs=adata.obs[[]],
        var=pd.DataFrame(index=["extra1", "extra2"]),
    )
    return ad.concat([adata, extra], axis=1, merge="first")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (genes_reordered, r"different order.*adata\[:, model.training_var_names\]"),
        (genes_missing, r"lacks 3 of the 120 genes .*'gene_0"),
        (genes_extra, r"has 2 genes the model was not trained on.*model.training_var_names"),
    ],
)
def test_predict_on_other_genes_fails_clearly(trained, change, message, snapshot, assert_unchanged):
    model, adata = trained
    other = change(adata[:40])
    before = snapshot(other)
    with pytest.raises(ValueError, match=message):
        model.predict(other, target_condition="stimulated")
    with pytest.raises(ValueError, match=message):
        model.get_latent_representation(other)
    assert_unchanged(before, other, scvi_keys=True)


def test_predict_on_new_data_with_bad_conditions_or_values(trained, snapshot, assert_unchanged):
    model, adata = trained
    other = adata[:40].copy()
    other.obs["condition"] = other.obs["condition"].cat.add_categories("IFN")
    other.obs.iloc[0, other.obs.columns.get_loc("condition")] = "IFN"
    before = snapshot(other)
    with pytest.raises(ValueError, match=r"not trained on: \['IFN'\]"):
        model.predict(other, target_condition="stimulated")
    assert_unchanged(before, other, scvi_keys=True)
    other = adata[:40].copy()
    other.obs["condition"] = other.obs["condition"].astype(object)
    other.obs.iloc[0, other.obs.columns.get_loc("condition")] = None
    with pytest.raises(ValueError, match="missing for 1 of 40 cells"):
        model.get_latent_representation(other)
    other = adata[:40].copy()
    set_value(other, 2, 2, np.nan)
    with pytest.raises(ValueError, match="NaN or infinite"):
        model.predict(other, target_condition="stimulated")
    other = adata[:40].copy()
    other.X = other.X * 0.5
    with pytest.raises(ValueError, match="non-integer"):
        model.predict(other, target_condition="stimulated")


def test_predict_errors_on_the_training_data_leave_it_unchanged(
    trained, snapshot, assert_unchanged
):
    model, adata = trained
    before = snapshot(adata)
    for kwargs, match in [
        ({"target_condition": "IFN"}, "Unknown condition"),
        ({"target_condition": "stimulated", "indices": []}, "empty"),
        ({"target_condition": "stimulated", "n_samples": -1}, "n_samples"),
        ({"target_condition": "stimulated", "library_size": 0}, "library_size"),
    ]:
        with pytest.raises(ValueError, match=match):
            model.predict(key_added="never", **kwargs)
    assert_unchanged(before, adata, scvi_keys=True)


def as_format(matrix, fmt, dtype):
    dense = matrix.toarray().astype(dtype)
    if fmt == "dense":
        return dense
    return sp.csr_matrix(dense) if fmt == "csr" else sp.csc_matrix(dense)


@pytest.mark.parametrize("fmt", ["dense", "csr", "csc"])
@pytest.mark.parametrize("dtype", [np.int64, np.float32, np.float64])
def test_every_valid_matrix_format_trains_and_predicts(fmt, dtype, snapshot, assert_unchanged):
    reference = small(n_cells=200, n_genes=20, seed=6)
    adata = reference.copy()
    adata.X = as_format(reference.X, fmt, dtype)
    before = snapshot(adata)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    pred = model.predict(target_condition="stimulated")
    assert pred.shape == adata.shape
    assert np.isfinite(pred.X).all()
    library = np.asarray(reference.X.sum(1)).ravel()
    np.testing.assert_allclose(pred.X.sum(1), library, rtol=1e-3)
    # the same cells in another format give the same latent space
    other = reference.copy()
    z_own = model.get_latent_representation()
    np.testing.assert_allclose(model.get_latent_representation(other), z_own, rtol=1e-5, atol=1e-6)
    assert_unchanged(before, adata, scvi_keys=True)


def test_no_call_changes_anything_but_the_keys_asked_for(snapshot, assert_unchanged):
    adata = small(n_cells=200, n_genes=20, seed=7)
    rng = np.random.default_rng(0)
    adata.layers["counts"] = adata.X.copy()
    adata.layers["dense"] = rng.normal(size=adata.shape)
    adata.obsm["X_pca"] = rng.normal(size=(adata.n_obs, 3))
    adata.obs["score"] = rng.normal(size=adata.n_obs)
    adata.var["highly_variable"] = rng.random(adata.n_vars) > 0.5
    adata.uns["note"] = {"kept": True}
    before = snapshot(adata)
    TRVAEModel.setup_anndata(adata, condition_key="condition", layer="counts")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert_unchanged(before, adata, scvi_keys=True)
    model.get_latent_representation(key_added="X_trvae")
    model.get_latent_representation(representation="y")
    model.predict(target_condition="stimulated", key_added="pred")
    model.predict(target_condition="control", n_samples=2)
    assert_unchanged(
        before, adata, added_layers=["pred"], added_obsm=["X_trvae"], added_uns=["pred"]
    )
    assert adata.uns["note"] == {"kept": True}
    # a new AnnData gets the same treatment
    other = adata[:50].copy()
    other_before = snapshot(other)
    model.predict(other, target_condition="stimulated")
    model.get_latent_representation(other)
    assert_unchanged(other_before, other, scvi_keys=True)
