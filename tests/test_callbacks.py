import copy
from types import SimpleNamespace

import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import sctrvae
from sctrvae import TRVAEModel, TRVAEModule
from sctrvae.train._callbacks import RestoreBestWeights, StopOnNonFiniteLoss


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

    # a constant learning rate high enough that the validation loss is not monotone
    plan = {"lr": 5e-2, "lr_schedule": None, "gene_lr_scale": 1.0, "n_epochs_kl_warmup": None}
    model.train(
        max_epochs=12,
        batch_size=64,
        early_stopping=True,
        early_stopping_patience=3,
        plan_kwargs=plan,
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


@pytest.mark.parametrize("warmup", [{"n_epochs_kl_warmup": 4}, {"n_steps_kl_warmup": 24}])
def test_best_weights_are_not_taken_from_the_kl_warm_up(warmup):
    """The warm-up epochs have by far the lowest loss; the restored weights are still later ones."""
    adata = sctrvae.datasets.simulate(n_cells=400, n_genes=60, seed=5)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    # a large KL weight and a learning rate too small to shrink the KL much: the logged loss
    # is the reconstruction plus 1000 x KL x (warm-up factor), lowest where the factor is 0
    model = TRVAEModel(adata, n_hidden=16, n_latent=3, kl_weight=1e3)
    snapshots, steps = {}, {}

    class Record(RestoreBestWeights):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                snapshots[trainer.current_epoch] = copy.deepcopy(pl_module.module.state_dict())
                steps[trainer.current_epoch] = trainer.global_step

    model.train(
        max_epochs=6,
        batch_size=64,
        early_stopping_patience=50,
        plan_kwargs={"lr": 1e-4, **warmup},
        callbacks=[Record()],
        enable_progress_bar=False,
    )
    losses = model.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)
    # epochs validated at the full KL weight: after the warm-up epochs, or its steps
    if "n_epochs_kl_warmup" in warmup:
        full = np.arange(len(losses)) >= warmup["n_epochs_kl_warmup"]
    else:
        full = np.array([steps[e] >= warmup["n_steps_kl_warmup"] for e in range(len(losses))])
    assert 0 < full.sum() < len(losses)
    assert losses[~full].min() < losses[full].min() - 50  # the trap: warm-up losses are lowest
    best = int(np.flatnonzero(full)[np.argmin(losses[full])])
    restored = model.module.state_dict()
    for key, value in snapshots[best].items():
        torch.testing.assert_close(restored[key], value, rtol=0, atol=0)
    callback = next(c for c in model.trainer.callbacks if type(c) is RestoreBestWeights)
    assert callback.best_epoch == best
    assert callback.best_score == pytest.approx(losses[best], rel=1e-6)


def test_best_weights_survive_a_checkpoint_and_resume(tmp_path, monkeypatch):
    monkeypatch.setattr(scvi.settings, "logging_dir", tmp_path / "scvi")
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=5)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    kwargs = {
        "batch_size": 64,
        "early_stopping_patience": 50,
        "plan_kwargs": {"n_epochs_kl_warmup": 1},  # epochs 1 and 2 compete for the best
        "enable_progress_bar": False,
    }
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model.train(max_epochs=3, callbacks=[checkpoint], enable_checkpointing=True, **kwargs)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    state = saved["RestoreBestWeights{'monitor': 'validation_loss'}"]
    losses = model.history["validation_loss"]["validation_loss"].to_numpy(dtype=float)[1:]
    assert state["best_epoch"] == 1 + int(np.argmin(losses))
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


def fake_validation(callback, module, epoch, score, kl_weight=1.0):
    """Call ``callback``'s hooks as Lightning would at the end of a validation epoch."""
    trainer = SimpleNamespace(
        sanity_checking=False,
        current_epoch=epoch,
        callback_metrics={"validation_loss": torch.tensor(score)},
    )
    plan = SimpleNamespace(module=module, kl_weight=torch.tensor(kl_weight), max_kl_weight=1.0)
    callback.on_validation_end(trainer, plan)
    return trainer, plan


def test_restore_best_weights_state_round_trip():
    """A callback loaded from another's state keeps comparing against, and restores, that best."""
    module = torch.nn.Linear(2, 1)
    callback = RestoreBestWeights()
    fake_validation(callback, module, epoch=0, score=3.0, kl_weight=0.5)  # warm-up: ignored
    assert callback.best_state is None
    fake_validation(callback, module, epoch=1, score=2.0)
    best = {k: v.clone() for k, v in module.state_dict().items()}
    with torch.no_grad():
        module.weight += 1.0  # the callback's copy must not follow the module

    other = RestoreBestWeights()
    other.load_state_dict(callback.state_dict())
    assert other.state_key == "RestoreBestWeights{'monitor': 'validation_loss'}"
    trainer, plan = fake_validation(other, module, epoch=2, score=2.5)  # worse than the loaded
    assert (other.best_score, other.best_epoch) == (2.0, 1)
    other.on_train_end(trainer, plan)
    for key, value in module.state_dict().items():
        assert torch.equal(value, best[key]), key


@pytest.mark.parametrize("validate_args", [True, False])
def test_divergence_off_cpu_is_read_only_at_checks_and_reports_the_first_bad_step(
    monkeypatch, validate_args
):
    """The accelerator path, forced on CPU: the loss is read at checks only, not every step.

    With torch.distributions' argument checks (the default) the NaN weights make the next step
    fail; without them training runs on to the end-of-epoch read. Either way the error is the
    divergence, at its first step, and the starting weights are back.
    """
    monkeypatch.setattr(torch.distributions.Distribution, "_validate_args", validate_args)
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    monkeypatch.setattr(StopOnNonFiniteLoss, "every_step_devices", ())
    reads = []
    divergence = StopOnNonFiniteLoss._divergence
    monkeypatch.setattr(
        StopOnNonFiniteLoss, "_divergence", lambda self, m: reads.append(1) or divergence(self, m)
    )
    original = TRVAEModule.loss
    calls = []

    def loss_turning_nan(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # step 2 of the 3 steps of epoch 0 (180 cells, batches of 64)
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(TRVAEModule, "loss", loss_turning_nan)
    with pytest.raises(FloatingPointError, match=r"loss is nan at epoch 0, step 2\. The weights"):
        model.train(max_epochs=3, batch_size=64, enable_progress_bar=False)
    assert len(reads) == 1  # one host read, not one per step
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, state[key]), key
