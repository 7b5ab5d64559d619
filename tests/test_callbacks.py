import copy

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

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


def test_best_weights_survive_a_checkpoint_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(scvi.settings, "logging_dir", tmp_path / "scvi")
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=5)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    kwargs = {"batch_size": 64, "early_stopping_patience": 50, "enable_progress_bar": False}
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model.train(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True, **kwargs)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    state = saved["RestoreBestWeights{'monitor': 'validation_loss'}"]
    losses = model.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)
    assert state["best_epoch"] == int(np.argmin(losses))
    assert state["best_score"] == pytest.approx(losses.min(), rel=1e-6)
    for key, value in model.module.state_dict().items():  # restored at the end of training
        torch.testing.assert_close(state["best_state"][key], value, rtol=0, atol=0)

    scvi.settings.seed = 0
    resumed = TRVAEModel(adata, n_hidden=8, n_latent=2)
    resumed.train(max_epochs=5, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), **kwargs)
    callback = next(c for c in resumed.trainer.callbacks if isinstance(c, RestoreBestWeights))
    new_losses = resumed.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)
    # the best over all five epochs, not only over the two run after resuming
    assert callback.best_score == pytest.approx(min(losses.min(), new_losses.min()), rel=1e-6)


def test_restore_best_weights_state_round_trip():
    callback = RestoreBestWeights()
    callback.best_score, callback.best_epoch = 1.5, 3
    callback.best_state = {"w": torch.arange(3.0)}
    other = RestoreBestWeights()
    other.load_state_dict(callback.state_dict())
    assert (other.best_score, other.best_epoch) == (1.5, 3)
    assert torch.equal(other.best_state["w"], torch.arange(3.0))
    assert other.state_key == "RestoreBestWeights{'monitor': 'validation_loss'}"
