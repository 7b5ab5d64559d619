import copy

import numpy as np
import torch

import sctrvae
from sctrvae import TRVAEModel
from sctrvae._callbacks import RestoreBestWeights


def test_early_stopping_restores_the_best_epoch_not_the_last():
    adata = sctrvae.datasets.simulate(n_cells=400, n_genes=60, seed=5)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=16, n_latent=3)

    snapshots = {}

    class Record(RestoreBestWeights):
        def on_validation_end(self, trainer, pl_module):
            super().on_validation_end(trainer, pl_module)
            if not trainer.sanity_checking:
                snapshots[trainer.current_epoch] = copy.deepcopy(pl_module.module.state_dict())

    # a learning rate high enough that the validation loss is not monotone
    model.train(
        max_epochs=12,
        batch_size=64,
        early_stopping=True,
        early_stopping_patience=3,
        plan_kwargs={"lr": 5e-2, "n_epochs_kl_warmup": None},
        callbacks=[Record()],
        enable_progress_bar=False,
    )
    losses = model.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)
    best_epoch = int(np.argmin(losses))
    last_epoch = len(losses) - 1
    assert best_epoch != last_epoch
    restored = model.module.state_dict()
    for key, value in snapshots[best_epoch].items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0)
    assert any(not torch.equal(restored[k], v) for k, v in snapshots[last_epoch].items())
