"""Saved models record their version and load only onto matching genes; training resumes."""

import lightning.pytorch as pl
import numpy as np
import pytest
import scvi
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import sctrvae
from sctrvae import TRVAEModel

TRAIN = {"batch_size": 64, "enable_progress_bar": False}


def fresh_model(seed=0):
    scvi.settings.seed = seed
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    return TRVAEModel(adata, n_hidden=8, n_latent=2), adata


def test_saved_model_records_the_package_version(trained, tmp_path):
    model, adata = trained
    assert model.sctrvae_version_ == sctrvae.__version__
    model.save(tmp_path / "model", overwrite=True)
    saved = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    assert saved["attr_dict"]["sctrvae_version_"] == sctrvae.__version__
    loaded = TRVAEModel.load(tmp_path / "model", adata=adata)
    assert loaded.sctrvae_version_ == sctrvae.__version__


def test_loaded_version_is_the_saved_one_not_the_installed_one(tmp_path):
    model, adata = fresh_model()
    model.train(max_epochs=1, **TRAIN)
    model.sctrvae_version_ = "0.0.1"  # as if saved by an older release
    model.save(tmp_path / "model")
    assert TRVAEModel.load(tmp_path / "model", adata=adata).sctrvae_version_ == "0.0.1"


@pytest.mark.parametrize(
    ("genes", "message"),
    [
        (lambda names: names[::-1], "different order"),
        (lambda names: names[2:], "lacks 2 of the 120 genes"),
    ],
)
def test_loading_onto_other_genes_fails_clearly(
    trained, tmp_path, genes, message, snapshot, assert_unchanged
):
    model, _ = trained
    model.save(tmp_path / "model", overwrite=True)
    other = sctrvae.datasets.simulate(n_cells=600, n_genes=120, n_cell_types=3, seed=1)
    other = other[:, genes(other.var_names)].copy()
    before = snapshot(other)
    with (
        pytest.warns(UserWarning, match="var_names"),  # scvi-tools' own, less specific warning
        pytest.raises(ValueError, match=message),
    ):
        TRVAEModel.load(tmp_path / "model", adata=other)
    assert_unchanged(before, other, scvi_keys=False)


def test_training_resumes_from_a_lightning_checkpoint(tmp_path, monkeypatch):
    # scvi-tools adds its own SaveCheckpoint under enable_checkpointing; keep it in tmp_path
    monkeypatch.setattr(scvi.settings, "logging_dir", tmp_path / "scvi")
    kwargs = {**TRAIN, "early_stopping": False, "plan_kwargs": {"n_epochs_kl_warmup": 1}}
    model, _ = fresh_model()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    model.train(max_epochs=2, callbacks=[checkpoint], enable_checkpointing=True, **kwargs)
    last = tmp_path / "ckpt" / "last.ckpt"
    assert torch.load(last, weights_only=False)["epoch"] == 1
    steps_per_epoch = model.trainer.global_step // 2

    resumed = []
    for _ in range(2):  # a fresh process: new model object, same data and seed
        other, _ = fresh_model()
        other.train(max_epochs=4, ckpt_path=str(last), **kwargs)
        assert list(other.history["elbo_train"].index) == [2, 3]
        assert other.trainer.global_step == 4 * steps_per_epoch
        resumed.append(other.get_latent_representation())
    np.testing.assert_array_equal(resumed[0], resumed[1])

    # the same object: history continues after the first two epochs
    first_two = model.history["elbo_train"].copy()
    model.train(max_epochs=4, ckpt_path=str(last), **kwargs)
    history = model.history["elbo_train"]
    assert list(history.index) == [0, 1, 2, 3]
    np.testing.assert_array_equal(history.iloc[:2].to_numpy(), first_two.to_numpy())


def test_training_again_runs_in_train_mode():
    model, _ = fresh_model()
    model.train(max_epochs=1, **TRAIN)
    assert not model.module.training  # scvi-tools switches to eval after training
    modes = []

    class RecordMode(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            modes.append(pl_module.module.training)

    model.train(max_epochs=1, callbacks=[RecordMode()], **TRAIN)
    assert modes
    assert all(modes)


def test_same_seed_gives_identical_latents_and_predictions():
    results = []
    for _ in range(2):
        model, _ = fresh_model(seed=3)
        model.train(max_epochs=3, **TRAIN)
        results.append(
            (
                model.get_latent_representation(),
                model.get_latent_representation(representation="y"),
                model.predict(target_condition="stimulated").X,
            )
        )
    for first, second in zip(*results, strict=True):
        np.testing.assert_array_equal(first, second)
    other, _ = fresh_model(seed=4)
    other.train(max_epochs=3, **TRAIN)
    assert not np.array_equal(other.get_latent_representation(), results[0][0])


def test_deterministic_outputs_ignore_the_torch_seed(trained):
    model, _ = trained
    outputs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        outputs.append(
            (
                model.get_latent_representation(),
                model.get_latent_representation(representation="y"),
                model.predict(target_condition="control", n_samples=0).X,
            )
        )
    for first, second in zip(*outputs, strict=True):
        np.testing.assert_array_equal(first, second)
    torch.manual_seed(1)
    sample_a = model.get_latent_representation(give_mean=False)
    torch.manual_seed(2)
    sample_b = model.get_latent_representation(give_mean=False)
    assert not np.array_equal(sample_a, sample_b)
