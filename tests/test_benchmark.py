"""leave_one_out: a row per fold, method and readout; reference rows on the same folds."""

import numpy as np
import pytest

import sctrvae
from sctrvae.benchmark import leave_one_out


@pytest.fixture(scope="module")
def scores():
    adata = sctrvae.datasets.simulate(n_cells=900, n_genes=60, n_cell_types=3, seed=5)
    sim = adata.uns["simulation"]
    change = sim["log_means"][0, 1] - sim["log_means"][0, 0]
    truth = {"type_0": np.where(sim["response_genes"][1], change, np.nan)}
    return leave_one_out(
        adata,
        "condition",
        "cell_type",
        "control",
        "stimulated",
        groups=["type_0"],
        model_kwargs={"n_hidden": 32, "n_latent": 4},
        train_kwargs={"max_epochs": 3, "batch_size": 64},
        methods={"trvae": {}, "label": {"labels_key": "cell_type", "mmd_mode": "label"}},
        truth=truth,
        n_degs=10,
        n_samples=2,
    )


def test_rows_cover_every_method_and_readout(scores):
    assert set(scores.group) == {"type_0"}
    pairs = set(zip(scores.method, scores.readout, strict=True))
    assert pairs == {
        ("trvae", "mean"),
        ("trvae", "sampled"),
        ("trvae", "calibrated"),
        ("cvae", "mean"),
        ("cvae", "sampled"),
        ("cvae", "calibrated"),
        ("label", "mean"),
        ("label", "sampled"),
        ("label", "calibrated"),
        ("ceiling", "cells"),
        ("identity", "cells"),
        ("mean_shift", "cells"),
    }
    models = scores[scores.method.isin(["trvae", "cvae", "label"])]
    assert (models.epochs == 3).all()
    # kNN balanced accuracy of the condition among training cells of each type
    assert models[["mixing_y", "mixing_z"]].stack().between(0.0, 1.0).all()
    assert (models.train_seconds > 0).all()


def test_scores_are_correlations_and_the_references_behave(scores):
    metrics = [c for c in scores if c.startswith(("r2_", "pearson_"))]
    values = scores[metrics].to_numpy(dtype=float)
    assert np.isfinite(values).all()
    assert (np.abs(values) <= 1 + 1e-9).all()
    by_method = scores.set_index("method")
    assert by_method.loc["identity", "pearson_delta_deg"] == 0.0
    assert by_method.loc["ceiling", "pearson_delta_deg"] > 0.9
    # against the simulator's truth: no change scores 0, the average change scores well
    assert by_method.loc["identity", "pearson_delta_true"] == 0.0
    assert by_method.loc["mean_shift", "pearson_delta_true"] > 0.5


def test_unknown_references_are_rejected():
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=1)
    with pytest.raises(ValueError, match="Unknown references"):
        leave_one_out(adata, "condition", "cell_type", "control", "stimulated", references=["x"])
