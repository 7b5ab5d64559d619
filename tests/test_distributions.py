"""SparseNegativeBinomial gives scvi-tools' negative binomial log-likelihood and gradients."""

import pytest
import torch
from scvi.distributions import NegativeBinomial

from sctrvae.distributions._negative_binomial import SparseNegativeBinomial

N_CELLS, N_GENES = 16, 40


def nb_inputs(theta_shape, n_samples):
    """float64 logits, library sizes, log θ and counts; ``n_samples`` adds a sample axis to μ."""
    generator = torch.Generator().manual_seed(0)
    mu_shape = (n_samples, N_CELLS, N_GENES) if n_samples else (N_CELLS, N_GENES)
    logits = torch.randn(mu_shape, generator=generator, dtype=torch.float64)
    library = torch.logspace(0, 5, N_CELLS, dtype=torch.float64).unsqueeze(-1)
    log_theta = torch.randn(theta_shape, generator=generator, dtype=torch.float64) * 2
    rate = library * torch.softmax(logits, -1).reshape(-1, N_CELLS, N_GENES)[0] * 0.5
    counts = torch.poisson(rate, generator=generator)
    assert 0.1 < (counts == 0).double().mean() < 0.9  # zero and non-zero terms both exercised
    return logits, library, log_theta, counts


def log_prob_and_gradients(cls, logits, library, log_theta, counts):
    params = [logits.clone().requires_grad_(), log_theta.clone().requires_grad_()]
    mu = library * torch.softmax(params[0], -1)
    log_prob = cls(mu=mu, theta=params[1].exp()).log_prob(counts)
    log_prob.sum().backward()
    return log_prob.detach(), [p.grad for p in params]


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("n_samples", [0, 3])
@pytest.mark.parametrize("theta_shape", [(1, N_GENES), (N_CELLS, N_GENES)])
def test_log_prob_and_gradients_match_scvi(monkeypatch, path, n_samples, theta_shape):
    # float64: in float32 both formulas round differently where log-gamma terms cancel
    if path == "dense":  # the formula accelerators use, forced on CPU
        monkeypatch.setattr(SparseNegativeBinomial, "sparse_devices", ())
    inputs = nb_inputs(theta_shape, n_samples)
    expected, expected_grads = log_prob_and_gradients(NegativeBinomial, *inputs)
    actual, actual_grads = log_prob_and_gradients(SparseNegativeBinomial, *inputs)
    assert expected.shape == ((n_samples,) if n_samples else ()) + (N_CELLS, N_GENES)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-7)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("path", ["sparse", "dense"])
@pytest.mark.parametrize("n_samples", [0, 3])
@pytest.mark.parametrize("theta_shape", [(1, N_GENES), (N_CELLS, N_GENES)])
def test_log_prob_sum_is_the_sum_over_genes_with_its_gradients(
    monkeypatch, path, n_samples, theta_shape
):
    if path == "dense":
        monkeypatch.setattr(SparseNegativeBinomial, "sparse_devices", ())
    logits, library, log_theta, counts = nb_inputs(theta_shape, n_samples)
    expected, expected_grads = log_prob_and_gradients(
        NegativeBinomial, logits, library, log_theta, counts
    )
    params = [logits.clone().requires_grad_(), log_theta.clone().requires_grad_()]
    mu = library * torch.softmax(params[0], -1)
    per_cell = SparseNegativeBinomial(mu=mu, theta=params[1].exp()).log_prob_sum(counts)
    per_cell.sum().backward()
    assert per_cell.shape == expected.shape[:-1]
    torch.testing.assert_close(per_cell.detach(), expected.sum(-1), rtol=1e-9, atol=1e-7)
    for p, e in zip(params, expected_grads, strict=True):
        torch.testing.assert_close(p.grad, e, rtol=1e-9, atol=1e-7)


def test_sparse_path_runs_on_cpu_only(monkeypatch):
    mu, theta = torch.full((4, 5), 2.0), torch.ones(1, 5)
    counts = torch.tensor([[0.0, 1.0, 0.0, 3.0, 0.0]] * 4)
    nonzero_calls = []
    nonzero = torch.Tensor.nonzero

    def counting_nonzero(self, *args, **kwargs):
        if self.is_floating_point():  # a scan of the counts, not of a mask of non-zero ones
            nonzero_calls.append(self.device.type)
        return nonzero(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "nonzero", counting_nonzero)
    SparseNegativeBinomial(mu=mu, theta=theta).log_prob(counts)
    assert nonzero_calls == ["cpu"]
    # any other device gets the dense formula: no nonzero(), whose size the host must read (on
    # the meta device, which has no data, it could not run at all)
    meta = SparseNegativeBinomial(mu=mu.to("meta"), theta=theta.to("meta"))
    log_prob = meta.log_prob(counts.to("meta"))
    assert (log_prob.device.type, log_prob.shape) == ("meta", (4, 5))
    assert nonzero_calls == ["cpu"]


@pytest.mark.parametrize("theta_shape", [(1, N_GENES), (N_CELLS, N_GENES)])
@pytest.mark.parametrize("trained", ["mu", "theta"])
def test_log_prob_sum_gradient_of_one_parameter_alone(theta_shape, trained):
    # a frozen dispersion (or frozen means) gets no gradient, the other the same as scvi-tools'
    logits, library, log_theta, counts = nb_inputs(theta_shape, 0)
    grads = {}
    for cls in (NegativeBinomial, SparseNegativeBinomial):
        params = [logits.clone().requires_grad_(trained == "mu"), log_theta.clone()]
        params[1].requires_grad_(trained == "theta")
        mu = library * torch.softmax(params[0], -1)
        dist = cls(mu=mu, theta=params[1].exp())
        sparse = cls is SparseNegativeBinomial
        per_cell = dist.log_prob_sum(counts) if sparse else dist.log_prob(counts).sum(-1)
        per_cell.sum().backward()
        grads[cls] = [p.grad for p in params]
    expected, actual = grads[NegativeBinomial], grads[SparseNegativeBinomial]
    trained_index = 0 if trained == "mu" else 1
    assert actual[1 - trained_index] is None
    torch.testing.assert_close(actual[trained_index], expected[trained_index], rtol=1e-9, atol=1e-7)


@pytest.mark.parametrize("n_samples", [0, 3])
@pytest.mark.parametrize("theta_shape", [(1, N_GENES), (N_CELLS, N_GENES)])
def test_log_prob_sum_takes_the_loaders_positions(monkeypatch, n_samples, theta_shape):
    # positions from a CSR minibatch, one stored zero among them: the same values and gradients
    # as the likelihood's own scan, which then does not run (unless μ adds a sample axis)
    logits, library, log_theta, counts = nb_inputs(theta_shape, n_samples)
    positions = counts.reshape(-1).nonzero().squeeze(1)
    zero = (counts.reshape(-1) == 0).nonzero()[0]
    positions = torch.cat([positions, zero]).sort().values
    scans = []  # scans of the counts for their non-zero entries
    nonzero = torch.Tensor.nonzero

    def counting_nonzero(self, *args, **kwargs):
        if self.is_floating_point():  # not the mask of the counts other than 1
            scans.append(self.numel())
        return nonzero(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "nonzero", counting_nonzero)
    results = []
    for given in (None, positions):
        params = [logits.clone().requires_grad_(), log_theta.clone().requires_grad_()]
        mu = library * torch.softmax(params[0], -1)
        dist = SparseNegativeBinomial(mu=mu, theta=params[1].exp())
        per_cell = dist.log_prob_sum(counts, nonzero=given)
        per_cell.sum().backward()
        results.append([per_cell.detach(), *(p.grad for p in params)])
    assert len(scans) == (2 if n_samples else 1)
    for scanned, from_positions in zip(*results, strict=True):
        torch.testing.assert_close(from_positions, scanned, rtol=1e-12, atol=1e-12)


def test_non_integer_counts_keep_scvis_log_likelihood():
    # the shortcut for counts of exactly 1 leaves 0.5, 1.5, ... to the log-gamma formula
    logits, library, log_theta, counts = nb_inputs((1, N_GENES), 0)
    counts = counts + 0.5 * (torch.arange(counts.numel()).reshape(counts.shape) % 3 == 0)
    assert ((counts > 0) & (counts != counts.round())).any()
    assert (counts == 1).any()
    expected, expected_grads = log_prob_and_gradients(
        NegativeBinomial, logits, library, log_theta, counts
    )
    actual, actual_grads = log_prob_and_gradients(
        SparseNegativeBinomial, logits, library, log_theta, counts
    )
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-7)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-7)
