"""Draws from a fitted module: posterior predictive samples, importance-sampled likelihood."""

from __future__ import annotations

import math

import torch
from scvi import REGISTRY_KEYS
from torch.distributions import Normal


class PosteriorSamplingMixin:
    """What scvi-tools' ``posterior_predictive_sample`` and ``get_marginal_ll`` call on a module."""

    @torch.inference_mode()
    def sample(
        self,
        tensors: dict[str, torch.Tensor],
        n_samples: int = 1,
        generative_kwargs: dict | None = None,
    ) -> torch.Tensor:
        """Draws of the posterior predictive ``p(x_hat | x)``: z from q(z | x, s), then x_hat.

        Returns a CPU tensor ``(cells, genes)``, or ``(cells, genes, n_samples)`` (the layout of
        scvi-tools' ``posterior_predictive_sample``).
        """
        _, generative_outputs = self.forward(
            tensors,
            inference_kwargs={"n_samples": n_samples},
            generative_kwargs=generative_kwargs,
            compute_loss=False,
        )
        samples = generative_outputs["px"].sample()
        return (samples.permute(1, 2, 0) if n_samples > 1 else samples).cpu()

    @torch.inference_mode()
    def marginal_ll(
        self,
        tensors: dict[str, torch.Tensor],
        n_mc_samples: int,
        return_mean: bool = False,
        n_mc_samples_per_pass: int = 1,
    ) -> torch.Tensor | float:
        """Importance-sampled ``log p(x | s)`` with q(z | x, s) as proposal, per cell.

        ``log mean_k p(x | z_k, s) p(z_k) / q(z_k | x, s)`` over ``n_mc_samples`` draws,
        ``n_mc_samples_per_pass`` at a time.
        """
        x = tensors[REGISTRY_KEYS.X_KEY]
        n_per_pass = min(n_mc_samples_per_pass, n_mc_samples)
        log_weights = []
        for _ in range(-(-n_mc_samples // n_per_pass)):
            inference_outputs, generative_outputs = self.forward(
                tensors, inference_kwargs={"n_samples": n_per_pass}, compute_loss=False
            )
            qz, px = inference_outputs["qz"], generative_outputs["px"]
            # (draws, cells, ...) also for a single draw, which inference returns without the axis
            z = inference_outputs["z"].reshape(-1, *qz.loc.shape)
            values = x.to(z.device).expand_as(px.scale)
            log_px_z = px.log_prob(values).sum(-1).reshape(z.shape[:2])
            log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
            log_qz = qz.log_prob(z).sum(-1)
            log_weights.append(log_px_z + log_pz - log_qz)
        log_weights = torch.cat(log_weights)[:n_mc_samples]
        log_lik = torch.logsumexp(log_weights, 0) - math.log(log_weights.shape[0])
        return log_lik.mean().item() if return_mean else log_lik.cpu()
