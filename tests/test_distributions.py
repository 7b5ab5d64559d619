"""SparseNegativeBinomial gives scvi-tools' negative binomial log-likelihood and gradients."""

import pytest
import torch
from scvi.distributions import NegativeBinomial

from sctrvae._distributions import SparseNegativeBinomial


@pytest.mark.parametrize("per_cell_theta", [False, True])
def test_log_prob_and_gradients_match_scvi(per_cell_theta):
    # float64: in float32 both formulas round differently where log-gamma terms cancel
    generator = torch.Generator().manual_seed(0)
    n_cells, n_genes = 16, 40
    logits = torch.randn(n_cells, n_genes, generator=generator, dtype=torch.float64)
    library = torch.logspace(0, 5, n_cells, dtype=torch.float64).unsqueeze(-1)
    theta_shape = (n_cells, n_genes) if per_cell_theta else (1, n_genes)
    log_theta = torch.randn(theta_shape, generator=generator, dtype=torch.float64) * 2
    counts = torch.poisson(library * torch.softmax(logits, -1) * 0.5, generator=generator)
    assert 0.1 < (counts == 0).float().mean() < 0.9  # both branches exercised

    results = []
    for cls in (NegativeBinomial, SparseNegativeBinomial):
        params = [logits.clone().requires_grad_(), log_theta.clone().requires_grad_()]
        mu = library * torch.softmax(params[0], -1)
        log_prob = cls(mu=mu, theta=params[1].exp()).log_prob(counts)
        log_prob.sum().backward()
        results.append((log_prob.detach(), [p.grad for p in params]))

    (expected, expected_grads), (actual, actual_grads) = results
    assert actual.shape == (n_cells, n_genes)
    torch.testing.assert_close(actual, expected, rtol=1e-9, atol=1e-7)
    for a, e in zip(actual_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-7)
