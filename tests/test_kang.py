"""Real data: predict IFN-β-stimulated CD4 T cells that training never saw."""

import anndata as ad
import numpy as np

import sctrvae


def test_held_out_cd4t_response_is_predicted(kang_path):
    adata = ad.read_h5ad(kang_path)
    is_cd4t = (adata.obs["cell_type"] == "CD4T").to_numpy()
    held_out = is_cd4t & (adata.obs["condition"] == "stimulated").to_numpy()
    train = adata[~held_out].copy()
    source = adata[is_cd4t & (adata.obs["condition"] == "control").to_numpy()].copy()
    real = adata[held_out].copy()

    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    model = sctrvae.TRVAEModel(train)
    model.train(max_epochs=60, enable_progress_bar=False)
    pred = model.predict(source, target_condition="stimulated")

    degs = sctrvae.metrics.top_degs(real, source, n_genes=100)
    assert "ISG15" in set(degs)
    scores = sctrvae.metrics.score_prediction(
        pred, real, source, degs=degs, predicted_layer="normalized"
    )
    assert scores["pearson_delta_deg"] > 0.8
    assert np.isfinite(list(scores.values())).all()
