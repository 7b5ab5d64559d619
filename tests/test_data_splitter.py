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

