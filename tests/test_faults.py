"""Failures during work: a save that fails half-way, damaged model files, backed files changed
underneath, interrupted predictions (kill and resume of training: ``test_resume.py``)."""

import errno
import io
import json
import threading

import anndata as ad
import numpy as np
import pytest
import scvi
import torch

import sctrvae
from sctrvae import TRVAEEnsemble, TRVAEModel


def small_model(seed):
    """An untrained model (its weights differ by seed), with the data it was set up on."""
    scvi.settings.seed = seed
    adata = sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    return TRVAEModel(adata, n_hidden=8, n_latent=2), adata


def files_of(path):
    """Every file under ``path`` with its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


def assert_same_weights(model, other):
    state = other.module.state_dict()
    for key, value in model.module.state_dict().items():
        torch.testing.assert_close(value, state[key])


def full_disk(monkeypatch, fail_at=1):
    """torch.save writes half its bytes and fails (disk full) at its ``fail_at``-th call."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < fail_at:
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        with open(f, "wb") as file:
            file.write(buffer.getvalue()[: buffer.tell() // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)


def interrupt(monkeypatch, fail_at=1):
    """torch.save is interrupted (Ctrl-C) at its ``fail_at``-th call, after opening the file."""
    real_save, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) < fail_at:
            return real_save(obj, f, *args, **kwargs)
        open(f, "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save)


def unpicklable(monkeypatch, fail_at=1):
    """Nothing patched: the model gets an attribute that torch.save cannot pickle."""


FAILURES = {"full disk": full_disk, "interrupt": interrupt, "unpicklable": unpicklable}
FAILURE_ERRORS = {"full disk": OSError, "interrupt": KeyboardInterrupt, "unpicklable": TypeError}


@pytest.mark.parametrize("failure", FAILURES)
def test_a_failed_save_leaves_the_previous_save_whole(tmp_path, monkeypatch, failure):
    earlier, adata = small_model(seed=0)
    earlier.save(tmp_path / "model", save_anndata=True)
    saved = files_of(tmp_path / "model")
    later, _ = small_model(seed=1)
    if failure == "unpicklable":
        later.lock_ = threading.Lock()  # scvi-tools saves every attribute ending in "_"
    FAILURES[failure](monkeypatch)
    with pytest.raises(FAILURE_ERRORS[failure]):
        later.save(tmp_path / "model", overwrite=True, save_anndata=True)
    monkeypatch.undo()
    assert files_of(tmp_path / "model") == saved
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temporary directory left
    assert_same_weights(earlier, TRVAEModel.load(tmp_path / "model", adata=adata))


def test_a_save_replaces_the_previous_one_and_keeps_other_prefixes(tmp_path):
    first, adata = small_model(seed=0)
    first.save(tmp_path / "model", prefix="first_")
    earlier, _ = small_model(seed=1)
    earlier.save(tmp_path / "model", overwrite=True)
    later, _ = small_model(seed=2)
    later.save(tmp_path / "model", overwrite=True)
    assert_same_weights(later, TRVAEModel.load(tmp_path / "model", adata=adata))
    loaded_first = TRVAEModel.load(tmp_path / "model", adata=adata, prefix="first_")
    assert_same_weights(first, loaded_first)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with pytest.raises(ValueError, match="already exists"):
        later.save(tmp_path / "model")


def test_a_failed_ensemble_save_leaves_the_previous_save_whole(tmp_path, monkeypatch):
    scvi.settings.seed = 0
    _, adata = small_model(seed=0)
    earlier = TRVAEEnsemble(adata, n_models=2, n_hidden=8, n_latent=2)
    earlier.save(tmp_path / "ensemble")
    saved = files_of(tmp_path / "ensemble")
    later = TRVAEEnsemble(adata, n_models=2, n_hidden=8, n_latent=2)
    full_disk(monkeypatch, fail_at=2)  # the first member is written, the second fails
    with pytest.raises(OSError, match="No space left"):
        later.save(tmp_path / "ensemble", overwrite=True)
    monkeypatch.undo()
    assert files_of(tmp_path / "ensemble") == saved
    assert [p.name for p in tmp_path.iterdir()] == ["ensemble"]
    loaded = TRVAEEnsemble.load(tmp_path / "ensemble", adata=adata)
    for member, loaded_member in zip(earlier.members, loaded.members, strict=True):
        assert_same_weights(member, loaded_member)


def truncate(file):
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def newer_format(file):
    saved = torch.load(file, weights_only=False)
    saved["attr_dict"].update(save_format_=2, sctrvae_version_="99.0")
    torch.save(saved, file)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (truncate, ValueError, r"model\.pt \(\d+ bytes\) cannot be read, it is damaged"),
        (lambda f: f.write_bytes(b""), ValueError, r"model\.pt is empty \(0 bytes\)"),
        (lambda f: f.write_bytes(b"not a model"), ValueError, r"model\.pt \(11 bytes\) cannot"),
        (lambda f: f.unlink(), FileNotFoundError, r"model\.pt does not exist: .* holds no saved"),
        (lambda f: torch.save({"weights": 1}, f), ValueError, "is not a model saved by"),
        (newer_format, ValueError, r"sctrvae 99\.0 in file format 2.* Upgrade sctrvae"),
    ],
    ids=["truncated", "empty", "garbage", "missing", "foreign", "newer format"],
)
@pytest.mark.parametrize("with_adata", [True, False])
def test_damaged_model_files_get_a_clear_error(tmp_path, damage, error, message, with_adata):
    model, adata = small_model(seed=0)
    model.save(tmp_path / "model", save_anndata=not with_adata)
    damage(tmp_path / "model" / "model.pt")
    with pytest.raises(error, match=message) as raised:
        TRVAEModel.load(tmp_path / "model", adata=adata if with_adata else None)
    assert str(tmp_path / "model") in str(raised.value)


def test_a_model_of_another_class_gets_a_clear_error(tmp_path):
    _, adata = small_model(seed=0)
    scvi.model.SCVI.setup_anndata(adata)
    scvi.model.SCVI(adata, n_hidden=8, n_latent=2).save(tmp_path / "scvi")
    with pytest.raises(ValueError, match=r"model\.pt holds a SCVI model, not a TRVAEModel"):
        TRVAEModel.load(tmp_path / "scvi", adata=adata)


def test_a_missing_directory_gets_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory of a saved model"):
        TRVAEModel.load(tmp_path / "nothing", adata=False)


@pytest.mark.parametrize(
    ("damage", "error", "message"),
    [
        (lambda p: (p / "ensemble.json").unlink(), FileNotFoundError, "holds no saved TRVAEE"),
        (lambda p: truncate(p / "ensemble.json"), ValueError, "is damaged or incomplete"),
        (lambda p: (p / "ensemble.json").write_text("{}"), ValueError, "is damaged or incomp"),
        (lambda p: (p / "member_1" / "model.pt").unlink(), FileNotFoundError, "model.pt does no"),
        (
            lambda p: (p / "ensemble.json").write_text(json.dumps({"members": ["a"]})),
            FileNotFoundError,
            r"lists members \['a'\] that are not directories",
        ),
        (
            lambda p: (p / "ensemble.json").write_text(json.dumps({"members": [], "format": 1})),
            ValueError,
            "lists no member models",
        ),
        (
            lambda p: (p / "ensemble.json").write_text(
                json.dumps({"members": ["member_0"], "format": 2, "sctrvae_version": "99.0"})
            ),
            ValueError,
            "Upgrade sctrvae",
        ),
    ],
    ids=[
        "no manifest",
        "truncated",
        "no members key",
        "member file",
        "missing member",
        "empty",
        "newer format",
    ],
)
def test_damaged_ensemble_files_get_a_clear_error(tmp_path, damage, error, message):
    _, adata = small_model(seed=0)
    TRVAEEnsemble(adata, n_models=2, n_hidden=8, n_latent=2).save(tmp_path / "ensemble")
    damage(tmp_path / "ensemble")
    with pytest.raises(error, match=message) as raised:
        TRVAEEnsemble.load(tmp_path / "ensemble", adata=adata)
    assert str(tmp_path / "ensemble") in str(raised.value)


def test_a_loaded_model_saves_again_in_the_current_format(tmp_path):
    model, adata = small_model(seed=0)
    model.save(tmp_path / "model")
    loaded = TRVAEModel.load(tmp_path / "model", adata=adata)
    loaded.save(tmp_path / "again")
    saved = torch.load(tmp_path / "again" / "model.pt", weights_only=False)
    assert saved["attr_dict"]["save_format_"] == sctrvae.model._persistence.SAVE_FORMAT
    np.testing.assert_array_equal(saved["var_names"], adata.var_names)


@pytest.fixture(scope="module")
def trained_small():
    scvi.settings.seed = 0
    adata = sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    return model, adata


def more_cells(adata):
    return ad.concat([adata, adata[:10]], index_unique="-")


def other_genes(adata):
    other = adata.copy()
    other.var_names = [f"other_{name}" for name in adata.var_names]
    return other


def other_cells(adata):
    return adata[::-1].copy()  # the same cells in another order


CALLS = {
    "predict": lambda model, adata: model.predict(adata, target_condition="stimulated"),
    "latent": lambda model, adata: model.get_latent_representation(adata),
    "view": lambda model, adata: model.get_latent_representation(adata[:50]),
}


@pytest.mark.parametrize(
    ("rewrite", "message"),
    [
        (more_cells, "its matrix has 110 cells x 20 genes, the AnnData 100 x 20"),
        (other_genes, r"its var_names differ .* at 20 positions \(first: 'gene_0' is now"),
        (other_cells, "its obs_names differ from the AnnData's at 100 positions"),
    ],
    ids=["more cells", "other genes", "other cells"],
)
@pytest.mark.parametrize("call", CALLS)
def test_a_backed_file_changed_underneath_is_refused(
    trained_small, tmp_path, rewrite, message, call
):
    model, adata = trained_small
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    expected = model.get_latent_representation(adata)
    np.testing.assert_allclose(model.get_latent_representation(backed), expected, rtol=1e-5)
    # another process writes a new file under the name; the handle is opened again by name
    rewrite(adata).write_h5ad(tmp_path / "new.h5ad")
    (tmp_path / "new.h5ad").replace(path)
    backed.file.close()
    with pytest.raises(ValueError, match=f"{path} behind this backed AnnData changed.*{message}"):
        CALLS[call](model, backed)


def test_training_on_a_backed_file_changed_underneath_is_refused(tmp_path):
    path = tmp_path / "cells.h5ad"
    sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    TRVAEModel.setup_anndata(backed, condition_key="condition")
    model = TRVAEModel(backed, n_hidden=8, n_latent=2)
    more_cells(ad.read_h5ad(path)).write_h5ad(tmp_path / "new.h5ad")
    (tmp_path / "new.h5ad").replace(path)
    backed.file.close()
    with pytest.raises(ValueError, match="its matrix has 110 cells"):
        model.train(max_epochs=1, enable_progress_bar=False)


def interrupt_after(monkeypatch, module, n_batches):
    """The module's encoder raises KeyboardInterrupt (Ctrl-C) after ``n_batches`` batches."""
    inference, calls = module.inference, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) > n_batches:
            raise KeyboardInterrupt
        return inference(*args, **kwargs)

    monkeypatch.setattr(module, "inference", interrupted)
    return calls


INTERRUPTED_CALLS = {
    "predict": lambda m, a: m.predict(
        a, target_condition="stimulated", batch_size=10, key_added="stim"
    ),
    "sampled": lambda m, a: m.predict(
        a, target_condition="stimulated", readout="calibrated", batch_size=10, key_added="stim"
    ),
    "latent": lambda m, a: m.get_latent_representation(a, batch_size=10, key_added="stim"),
    "latent y": lambda m, a: m.get_latent_representation(
        a, batch_size=10, representation="y", key_added="stim"
    ),
    "differential": lambda m, a: m.differential_response(
        a,
        groupby="cell_type",
        source="control",
        target="stimulated",
        batch_size=10,
        key_added="stim",
    ),
}


@pytest.mark.parametrize("call", INTERRUPTED_CALLS)
@pytest.mark.parametrize("data", ["new", "earlier result", "the model's"])
def test_an_interrupted_call_leaves_the_anndata_as_it_was(
    trained_small, monkeypatch, snapshot, assert_unchanged, call, data
):
    model, adata = trained_small
    if data == "the model's":
        target = adata  # registered already: only the result could be half-written
    else:
        target = sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0)
    if data == "earlier result":
        INTERRUPTED_CALLS[call](model, target)
        target.obs = target.obs.drop(columns=[c for c in target.obs if c.startswith("_scvi")])
        for key in [k for k in target.uns if k.startswith("_scvi")]:
            del target.uns[key]
    before = snapshot(target)
    earlier = {name: dict(getattr(target, name)).get("stim") for name in ("layers", "obsm", "uns")}
    calls = interrupt_after(monkeypatch, model.module, n_batches=3)
    with pytest.raises(KeyboardInterrupt):
        INTERRUPTED_CALLS[call](model, target)
    assert len(calls) == 4  # interrupted in the loop over batches, not before
    monkeypatch.undo()
    # not even scvi-tools' registration of a new AnnData stays
    assert_unchanged(before, target, scvi_keys=data == "the model's")
    for name, value in earlier.items():
        assert dict(getattr(target, name)).get("stim") is value
    INTERRUPTED_CALLS[call](model, target)  # and the next call works


def test_an_interrupted_ensemble_prediction_leaves_the_anndata_as_it_was(
    monkeypatch, snapshot, assert_unchanged
):
    _, adata = small_model(seed=0)
    ensemble = TRVAEEnsemble(adata, n_models=2, n_hidden=8, n_latent=2)
    ensemble.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    target = sctrvae.datasets.simulate(n_cells=100, n_genes=20, seed=0)
    before = snapshot(target)
    # the first member predicts (and registers target), the second is interrupted
    interrupt_after(monkeypatch, ensemble.members[1].module, n_batches=3)
    with pytest.raises(KeyboardInterrupt):
        ensemble.predict(target, target_condition="stimulated", batch_size=10, key_added="stim")
    assert_unchanged(before, target, scvi_keys=False)
