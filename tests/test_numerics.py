"""The loss and the MMD stay finite on extreme input; a diverging run stops with a clear error."""

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import sctrvae
from sctrvae import TRVAEModel, TRVAEModule, mmd, pairwise_condition_mmd


def extreme_batch(n_genes=30):
    """Library sizes from 1 to 1e6, two all-zero genes, and a condition with a single cell."""
    rng = np.random.default_rng(0)
    libraries = np.array([1, 2, 10, 1e3, 1e4, 1e5, 1e6, 1e6, 5, 50])
    x = np.zeros((libraries.size, n_genes))
    p = rng.dirichlet(np.ones(n_genes - 2), size=libraries.size)
    for i, total in enumerate(libraries):
        x[i, 2:] = rng.multinomial(int(total), p[i])
    condition = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])  # condition 2: one cell
    return {
        REGISTRY_KEYS.X_KEY: torch.tensor(x, dtype=torch.float32),
        REGISTRY_KEYS.BATCH_KEY: torch.tensor(condition).reshape(-1, 1),
    }


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
@pytest.mark.parametrize("dispersion", ["gene", "gene-condition"])
def test_loss_and_gradients_are_finite_on_extreme_batches(likelihood, dispersion):
    torch.manual_seed(0)
    tensors = extreme_batch()
    assert tensors[REGISTRY_KEYS.X_KEY].sum(1).max() == 1e6
    module = TRVAEModule(
        n_input=30,
        n_conditions=3,
        n_hidden=16,
        n_latent=4,
        likelihood=likelihood,
        dispersion=dispersion,
    )
    _, _, loss = module(tensors)
    assert torch.isfinite(loss.loss)
    assert torch.isfinite(loss.extra_metrics["mmd"])
    loss.loss.backward()
    for name, parameter in module.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize("bandwidths", ["auto", (1.0,), (1e-6, 1.0, 1e6)])
@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e6])
def test_mmd_is_finite_with_large_kernel_distances(bandwidths, scale):
    rng = np.random.default_rng(1)
    a = torch.tensor(rng.normal(size=(6, 8)) * scale, dtype=torch.float32)
    b = torch.tensor(rng.normal(5.0, 1.0, size=(6, 8)) * scale, dtype=torch.float32)
    y = torch.cat([a, b]).requires_grad_(True)
    codes = torch.tensor([0] * 6 + [1] * 6)
    value = pairwise_condition_mmd(y, codes, bandwidths)
    value.backward()
    assert torch.isfinite(value)
    assert 0.0 <= value.item() <= 2.0  # a mean of kernels in [0, 1]: MMD² is at most 2
    assert torch.isfinite(y.grad).all()


def test_mmd_with_fixed_small_bandwidth_and_far_apart_sets_is_maximal():
    a, b = torch.zeros(4, 3), torch.full((4, 3), 1e4)
    # within-set kernels are 1, across-set kernels underflow to 0
    assert mmd(a, b, [1.0]).item() == pytest.approx(2.0)


@pytest.mark.parametrize("offset", [1e-3, 1e-10, 1e-19, 1e-30])
def test_collapsed_representation_keeps_gradients_bounded(offset):
    # most rows identical (e.g. dead units): the median distance is 0 and the bandwidth floor
    # keeps 1 / σ finite; before the floor, gradients reached 1e17 for offsets near 1e-19
    y = torch.zeros(12, 4)
    y[0, 0], y[7, 1] = offset, offset
    y += 1.0  # identical rows far from the origin
    y.requires_grad_(True)
    value = pairwise_condition_mmd(y, torch.tensor([0] * 6 + [1] * 6))
    value.backward()
    assert torch.isfinite(value)
    assert y.grad.abs().max() < 1e4


def test_all_zero_representation_has_zero_mmd_and_gradient():
    y = torch.zeros(8, 5, requires_grad=True)
    value = pairwise_condition_mmd(y, torch.tensor([0, 1] * 4))
    value.backward()
    assert value.item() == 0.0
    assert torch.equal(y.grad, torch.zeros_like(y))


def small_model(n_cells=200):
    adata = sctrvae.datasets.simulate(n_cells=n_cells, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    return TRVAEModel(adata, n_hidden=8, n_latent=2), adata


class RecordGradientNorms(pl.Callback):
    """Total gradient norm after each step (clipping happened; the next step zeroes them)."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        grads = [p.grad for p in pl_module.module.parameters() if p.grad is not None]
        self.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())


@pytest.mark.parametrize("clip", [None, 0.5])
def test_gradient_clipping_bounds_the_gradients_the_optimiser_sees(clip):
    model, _ = small_model()
    record = RecordGradientNorms()
    model.train(
        max_epochs=2,
        batch_size=64,
        gradient_clip_val=clip,
        callbacks=[record],
        enable_progress_bar=False,
    )
    assert record.norms
    if clip is None:
        assert max(record.norms) > 0.5  # so that the clipped run has something to clip
    else:
        assert max(record.norms) <= clip * (1 + 1e-4)


def test_divergence_raises_and_leaves_an_untrained_model_untrained():
    model, _ = small_model()
    with pytest.raises(
        FloatingPointError, match=r"Training diverged: the loss is nan.*Lower the learning rate"
    ):
        model.train(max_epochs=3, batch_size=64, plan_kwargs={"lr": 1e6}, enable_progress_bar=False)
    assert not model.is_trained_
    with pytest.raises(RuntimeError, match="train"):
        model.predict(target_condition="stimulated")


def test_divergence_restores_the_weights_of_a_trained_model(monkeypatch):
    model, _ = small_model()
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    before = model.predict(target_condition="stimulated").X
    state = {k: v.clone() for k, v in model.module.state_dict().items()}
    original = TRVAEModule.loss
    calls = []

    def loss_turning_nan(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) > 2:  # a few good training steps, then inf
            out.loss = out.loss * float("inf")
        return out

    monkeypatch.setattr(TRVAEModule, "loss", loss_turning_nan)
    with pytest.raises(FloatingPointError, match=r"loss is inf.*gradient_clip_val"):
        model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    monkeypatch.undo()
    for key, value in model.module.state_dict().items():
        assert torch.equal(value, state[key]), key
    after = model.predict(target_condition="stimulated").X
    np.testing.assert_array_equal(before, after)
    assert np.isfinite(after).all()
