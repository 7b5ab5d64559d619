"""Negative binomial whose log-likelihood skips the log-gamma terms of zero counts."""

from __future__ import annotations

import torch
from scvi.distributions import NegativeBinomial

_EPS = 1e-8


class SparseNegativeBinomial(NegativeBinomial):
    """:class:`scvi.distributions.NegativeBinomial` with a faster, equal ``log_prob`` on CPU.

    ``log p(x) = θ log θ - θ log(θ + μ) + x (log μ - log(θ + μ)) + lgamma(x + θ) - lgamma(θ)
    - lgamma(x + 1)``. Only the first two terms are non-zero for a zero count, so on CPU the rest
    (and the digamma gradients, the bulk of a training step there) are evaluated only where
    ``x > 0``: single-cell count matrices are mostly zeros. Finding those entries takes
    ``nonzero()``, whose output size the host must read; on an accelerator that read would stall
    every step, so there the dense formula of scvi-tools runs instead. Shapes broadcast as in
    scvi-tools (e.g. ``μ`` with a leading sample axis against per-cell counts). Everything else
    (mean, sampling, variance) is scvi-tools' own.

    ``library`` (cells × 1, optional) states that ``mu = library * scale`` with ``scale`` a
    softmax: on CPU, with counts of ``mu``'s shape, ``log_prob`` then returns the same values
    through :class:`_SoftmaxNBLogLikelihood`, whose backward is written out instead of
    autograd's chain through ``μ``.
    """

    #: Devices on which the zero-skipping path runs; elsewhere ``log_prob`` is scvi-tools' own.
    sparse_devices = ("cpu",)

    def __init__(self, *args, library: torch.Tensor | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.library = library

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if value.device.type not in self.sparse_devices:
            return super().log_prob(value)
        if self._validate_args:
            self._validate_sample(value)
        mu, theta = self.mu, self.theta
        if self.library is not None and self.scale is not None and value.shape == mu.shape:
            return _SoftmaxNBLogLikelihood.apply(self.scale, self.library, theta, value, mu)
        if value.shape != mu.shape:  # e.g. μ with a leading sample axis: broadcast as scvi-tools
            shape = torch.broadcast_shapes(value.shape, mu.shape)
            value, mu, theta = value.expand(shape), mu.expand(shape), theta.expand(shape)
        log_theta_mu = torch.log(theta + mu + _EPS)
        log_prob = theta * (torch.log(theta + _EPS) - log_theta_mu)
        nonzero = (value > 0).nonzero(as_tuple=True)
        x = value[nonzero]
        th = theta[nonzero]
        count_terms = (
            x * (torch.log(mu[nonzero] + _EPS) - log_theta_mu[nonzero])
            + torch.lgamma(x + th)
            - torch.lgamma(th)
            - torch.lgamma(x + 1)
        )
        return log_prob.index_put(nonzero, count_terms, accumulate=True)


def _sum_to(tensor: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``tensor`` summed over the axes along which ``shape`` was broadcast to it."""
    return tensor.sum_to_size(shape) if tensor.shape != shape else tensor


class _SoftmaxNBLogLikelihood(torch.autograd.Function):
    """Elementwise NB log-likelihood of counts under ``μ = library · scale``, zero counts skipped.

    Inputs ``scale`` (a softmax over genes, cells × genes), ``library`` (cells × 1, no
    gradient), ``theta`` (broadcastable to cells × genes), counts and ``mu`` (``library ·
    scale``, already computed by the decoder). The gradient flows to ``scale`` (``library ·
    ∂/∂μ``; autograd's softmax backward takes it on to the logits) and to ``theta``, none to
    ``mu``: values and gradients equal those of autograd through the formula of
    :class:`SparseNegativeBinomial`, in a third of the tensor passes.
    """

    @staticmethod
    def forward(ctx, scale, library, theta, counts, mu):
        denominator = mu + (theta + _EPS)
        log_denominator = torch.log(denominator)
        log_prob = (torch.log(theta + _EPS) - log_denominator).mul_(theta)
        nonzero = (counts > 0).nonzero(as_tuple=True)
        x = counts[nonzero]
        th = theta.expand_as(counts)[nonzero]
        log_prob.index_put_(
            nonzero,
            x * (torch.log(mu[nonzero] + _EPS) - log_denominator[nonzero])
            + torch.lgamma(x + th)
            - torch.lgamma(th)
            - torch.lgamma(x + 1),
            accumulate=True,
        )
        ctx.save_for_backward(library, theta, counts, mu, denominator, log_denominator)
        ctx.nonzero = nonzero
        return log_prob

    @staticmethod
    def backward(ctx, grad):
        library, theta, counts, mu, denominator, log_denominator = ctx.saved_tensors
        nonzero = ctx.nonzero
        x = counts[nonzero]
        # (x + θ) / (θ + μ + ε), the part of ∂/∂μ (and of ∂/∂θ) that every entry has
        ratio = (counts + theta).div_(denominator)
        grad_theta = None
        if ctx.needs_input_grad[2]:
            th = theta.expand_as(counts)[nonzero]
            per_entry = (torch.log(theta + _EPS) + theta / (theta + _EPS)) - log_denominator
            per_entry.sub_(ratio)
            per_entry.index_put_(
                nonzero, torch.digamma(x + th) - torch.digamma(th), accumulate=True
            )
            grad_theta = _sum_to(per_entry.mul_(grad), theta.shape)
        # ∂/∂μ = x / (μ + ε) − (x + θ) / (θ + μ + ε), the first term only where x > 0
        grad_mu = ratio.neg_()
        grad_mu.index_put_(nonzero, x / (mu[nonzero] + _EPS), accumulate=True)
        return grad_mu.mul_(grad).mul_(library), None, grad_theta, None, None
