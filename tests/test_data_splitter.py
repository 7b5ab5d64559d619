import numpy as np
import pytest
import scvi

import sctrvae
from sctrvae import ConditionBalancedDataSplitter


def draws(adata_manager, **kwargs):
    """The split and the first epoch's training batches of a freshly built splitter."""
    splitter = ConditionBalancedDataSplitter(adata_manager, batch_size=64, **kwargs)
    return splitter.train_idx.tolist(), list(splitter.train_dataloader().sampler)


def test_each_run_draws_its_own_split_and_shuffles_unless_seeded(sim):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    manager = sctrvae.TRVAEModel(sim).adata_manager
    scvi.settings.seed = None  # the scvi-tools default
    assert draws(manager)[0] != draws(manager)[0]
    # with every cell in training the split is fixed, so only the sampler's seed can differ
    assert draws(manager, train_size=1.0)[1] != draws(manager, train_size=1.0)[1]
    scvi.settings.seed = 3
    first = draws(manager)
    scvi.settings.seed = 3
    assert draws(manager) == first


@pytest.mark.parametrize("split", [{"train_size": 1.0}, {"validation_size": 0}])
def test_training_without_validation_cells_runs_every_epoch(sim, split):
    sctrvae.TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = sctrvae.TRVAEModel(sim, n_hidden=16, n_latent=3)
    with pytest.warns(UserWarning, match="no validation cells"):
        model.train(max_epochs=3, batch_size=64, enable_progress_bar=False, **split)
    assert len(model.validation_indices) == 0
    assert len(model.history["train_loss"]) == 3
    assert not any("validation" in key for key in model.history)
    pred = model.predict(target_condition="stimulated")
    assert np.isfinite(pred.X).all()
