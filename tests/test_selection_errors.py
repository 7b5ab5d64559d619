import numpy as np
import pytest

import sctrvae


def test_setup_on_an_empty_selection_says_it_has_no_cells(sim, snapshot, assert_unchanged):
    empty = sim[(sim.obs.cell_type == "CD4T").to_numpy()].copy()
    before = snapshot(empty)
    with pytest.raises(ValueError, match="has no cells") as err:
        sctrvae.TRVAEModel.setup_anndata(empty, condition_key="condition")
    assert "is empty" not in str(err.value)
    assert_unchanged(before, empty, scvi_keys=False)


def test_predict_on_an_empty_selection_says_it_has_no_cells(trained):
    model, adata = trained
    empty = adata[(adata.obs.cell_type == "CD4T").to_numpy()].copy()
    with pytest.raises(ValueError, match="has no cells"):
        model.predict(empty, target_condition="stimulated")


def test_target_passed_positionally_points_to_target_condition(trained):
    model, adata = trained
    ctrl = adata[(adata.obs.condition == "control").to_numpy()].copy()
    with pytest.raises(TypeError, match=r"pass target_condition='stimulated'"):
        model.predict(ctrl, "stimulated")
    with pytest.raises(TypeError, match=r"target_condition=\.\.\."):
        model.predict(ctrl, np.array(ctrl.obs_names[:3]), target_condition="stimulated")
    # positions and masks still select cells
    mask = np.zeros(ctrl.n_obs, dtype=bool)
    mask[:3] = True
    assert model.predict(ctrl, mask, target_condition="stimulated").n_obs == 3
