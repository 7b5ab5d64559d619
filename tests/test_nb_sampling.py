"""Negative binomial draws: the distribution of scvi-tools' sampler, at a fraction of its cost."""

import numpy as np
import pytest
import torch
from scipy import stats

from sctrvae.distributions._nb_sampling import MAX_INVERSE_MEAN, MAX_RATIO, sample_negative_binomial
from sctrvae.distributions._negative_binomial import SparseNegativeBinomial

N_DRAWS = 200_000
# (mean, inverse dispersion): inverse-CDF entries (small means, heavy and light tails) and
# gamma-Poisson ones (moderate and large means; a small mean whose recursion ratio is above
# MAX_RATIO)
PARAMETERS = [
    (0.01, 0.02),
    (0.3, 0.4),
    (0.05, 5.0),
    (0.9, 9.0),
    (4.0, 9.0),
    (50.0, 1.0),
    (0.3, 0.05),
]


def chi_square_p(draws: np.ndarray, mu: float, theta: float) -> float:
    """p-value of the draws' counts against the NB pmf (bins with ≥ 5 expected, tail pooled)."""
    nb = stats.nbinom(theta, theta / (theta + mu))
    last = int(nb.ppf(0.999)) + 1
    observed = np.array([(draws == k).sum() for k in range(last)] + [(draws >= last).sum()])
    expected = np.append(nb.pmf(np.arange(last)), nb.sf(last - 1)) * draws.size
    kept = expected >= 5
    statistic = ((observed[kept] - expected[kept]) ** 2 / expected[kept]).sum()
    return stats.chi2(kept.sum() - 1).sf(statistic)


@pytest.mark.parametrize(("mu", "theta"), PARAMETERS)
def test_draws_follow_the_negative_binomial(mu, theta):
    draws = sample_negative_binomial(torch.full((N_DRAWS,), mu), torch.tensor([theta]))
    assert draws.shape == (N_DRAWS,)
    assert draws.dtype == torch.float32
    draws = draws.numpy()
    assert np.array_equal(draws, np.round(draws))
    assert draws.min() >= 0
    # unseeded, as users run it: a correct sampler fails this once in 10^6 runs
    assert chi_square_p(draws, mu, theta) > 1e-6


def test_both_paths_in_one_tensor_keep_every_entry_in_place():
    # columns alternate between the two paths; each column's mean must be its own
    mu = torch.tensor([0.02, 30.0, 1.0, 0.5, 200.0, 0.0])
    theta = torch.tensor([0.5, 2.0, 10.0, 0.1, 50.0, 1.0])
    ratio = mu / (theta + mu)
    by_inverse = (mu <= MAX_INVERSE_MEAN) & (ratio <= MAX_RATIO)
    assert by_inverse.any()
    assert not by_inverse.all()
    draws = sample_negative_binomial(mu.expand(50_000, 6), theta, sample_shape=(2,))
    assert draws.shape == (2, 50_000, 6)
    standard_error = torch.sqrt((mu + mu**2 / theta) / 100_000)
    assert (draws.mean((0, 1)) - mu).abs().le(6 * standard_error + 1e-6).all()
    assert draws[..., -1].eq(0).all()  # zero mean: zero counts


def test_draws_follow_the_seed():
    mu, theta = torch.rand(30, 40) * 3, torch.rand(1, 40) + 0.1
    torch.manual_seed(7)
    first = sample_negative_binomial(mu, theta, (3,))
    torch.manual_seed(7)
    assert torch.equal(first, sample_negative_binomial(mu, theta, (3,)))
    assert not torch.equal(first, sample_negative_binomial(mu, theta, (3,)))


@pytest.mark.parametrize("path", ["cpu", "scvi-tools"])
def test_distribution_sample_matches_scvi_moments(monkeypatch, path):
    if path == "scvi-tools":  # what accelerators run, forced on CPU
        monkeypatch.setattr(SparseNegativeBinomial, "sparse_devices", ())
    mu = torch.tensor([[0.05, 0.8, 12.0]]).expand(40_000, 3)
    theta = torch.tensor([[0.3, 2.0, 1.5]])
    draws = SparseNegativeBinomial(mu=mu, theta=theta).sample((2,))
    assert draws.shape == (2, 40_000, 3)
    variance = mu[0] + mu[0] ** 2 / theta[0]
    assert (draws.mean((0, 1)) - mu[0]).abs().le(6 * torch.sqrt(variance / 80_000)).all()
    assert torch.allclose(draws.var((0, 1)), variance, rtol=0.15)
