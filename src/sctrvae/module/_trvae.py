"""TRVAEModule: the tensors-only conditional VAE with an MMD penalty on the first decoder layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from scvi import REGISTRY_KEYS
from scvi.distributions import Normal as NormalWithMean
from scvi.distributions import ZeroInflatedNegativeBinomial
from scvi.module.base import BaseModuleClass, LossOutput, auto_move_data
from scvi.nn import Encoder, FCLayers
from torch import nn
from torch.distributions import Normal

from .._constants import COUNT_POSITIONS_KEY, Dispersion, Likelihood, MMDMode
from ..distributions._negative_binomial import SparseNegativeBinomial
from ._covariates import covariate_tensors, mmd_strata
from ._mmd import check_mmd_mode, pairwise_condition_mmd
from ._posterior_sampling import PosteriorSamplingMixin


class TRVAEModule(PosteriorSamplingMixin, BaseModuleClass):
    """Transfer VAE (trVAE) on raw counts.

    ``z = f(x, s)`` (encoder), ``y = g1(z, s)`` (first decoder layer),
    ``x ~ p(x | g2(y, c) + b_s)``.
    The condition ``s`` enters the first layer of the encoder and of the decoder, and, with
    ``condition_offset``, the decoder's output as a per-gene offset ``b_s`` of the log-rates.
    The MMD between conditions is taken on ``y``. Covariates ``c`` (donor, batch, ...) enter
    the first layer of ``g2``, and, with ``covariates_in_y`` (default), ``g1`` beside the
    condition: ``y = g1(z, s, c)``, where a donor's own response can form.

    Parameters
    ----------
    n_input
        Number of genes.
    n_conditions
        Number of conditions.
    n_hidden
        Width of every hidden layer; ``y`` has this many features.
    n_latent
        Dimension of ``z``.
    n_layers
        Hidden layers of the encoder, and of the decoder (``g1`` is the first of them).
    dropout_rate
        Dropout of the encoder and of the decoder layers after ``g1`` (``g1`` has none, so the
        MMD sees noise-free activations).
    likelihood
        ``"nb"`` and ``"zinb"`` model raw counts with the cell's library size; ``"normal"`` is the
        paper's squared error on already log-normalised values.
    dispersion
        Inverse dispersion per gene, or per gene and condition.
    mmd_weight
        Weight of the mean pairwise MMD² on ``y``; ``0`` gives a plain conditional VAE.
    kernel_bandwidths
        ``"auto"`` (median heuristic, scale-free) or fixed σ values of the multi-scale RBF kernel.
    mmd_mode
        What the MMD compares (see :func:`~sctrvae.pairwise_condition_mmd`): ``"global"`` (all
        cells of one condition against all of another), ``"label"`` (within each label present
        in both conditions of the minibatch) or ``"reweighted"`` (conditions weighted to equal
        label proportions). The last two read the labels (``REGISTRY_KEYS.LABELS_KEY``).
    n_labels
        Number of label categories (needed by the label-aware modes).
    kl_weight
        β of the KL term, multiplied by the training plan's warm-up factor.
    use_batch_norm, use_layer_norm
        Normalisation of the hidden layers (``scvi.nn.FCLayers``).
    n_cats_per_cov
        Categories of each categorical covariate (the batch first, see ``mmd_within_batch``).
    n_continuous_cov
        Number of continuous covariates.
    encode_covariates
        Also give the covariates to the encoder (scVI's option of the same name). Default
        ``False``: ``z`` is then corrected for them by the decoder, which receives them.
    mmd_within_batch
        The label-aware MMD modes match cells by (label, batch) instead of label: the conditions
        are compared within each donor (``"label"``), or at equal donor proportions
        (``"reweighted"``); a donor seen in one condition only stays out of the penalty.
    covariates_in_y
        Also give the covariates to ``g1``, so that they meet the condition in ``y``. Without
        it, ``y`` is the same for every donor, and the only condition × donor effect left is
        what ``g2`` can read from a ``y`` that the MMD aligns across conditions: on simulated
        donors whose response is partly their own, registering them without it transferred worse
        than not registering them (``benchmarks/covariates.py``). The MMD compares conditions
        within donors (``mmd_within_batch``), so ``y`` may carry the donor.
    condition_offset
        Add a learned offset per gene and condition to the decoder's output (the log-rates
        before the softmax, or the mean of ``"normal"``): a condition's average effect reaches
        the counts as a multiplicative change of each gene's rate, without passing through
        ``y``. The MMD can then align ``y`` across conditions without erasing the shared
        response, and a group never observed in the target condition receives at least that
        response, applied to its own profile, while ``y`` carries what is specific to it. A zero
        offset is the decoder without it (models saved before it existed load that way).
    """

    def __init__(
        self,
        n_input: int,
        n_conditions: int,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 2,
        dropout_rate: float = 0.1,
        likelihood: Likelihood = "nb",
        dispersion: Dispersion = "gene",
        mmd_weight: float = 100.0,
        kernel_bandwidths: str | Sequence[float] = "auto",
        mmd_mode: MMDMode = "global",
        n_labels: int = 0,
        kl_weight: float = 1.0,
        use_batch_norm: bool = False,
        use_layer_norm: bool = True,
        condition_offset: bool = True,
        n_cats_per_cov: Sequence[int] | None = None,
        n_continuous_cov: int = 0,
        encode_covariates: bool = False,
        mmd_within_batch: bool = False,
        covariates_in_y: bool = True,
    ):
        super().__init__()
        if likelihood not in ("nb", "zinb", "normal"):
            raise ValueError(f"likelihood must be 'nb', 'zinb' or 'normal', got {likelihood!r}.")
        if dispersion not in ("gene", "gene-condition"):
            raise ValueError(f"dispersion must be 'gene' or 'gene-condition', got {dispersion!r}.")
        if n_layers < 1:
            raise ValueError("n_layers must be at least 1.")
        n_cats_per_cov = list(n_cats_per_cov or [])
        if mmd_within_batch and not n_cats_per_cov:
            raise ValueError("mmd_within_batch needs a batch: setup_anndata(..., batch_key=...).")
        check_mmd_mode(mmd_mode, has_labels=n_labels > 0 or mmd_within_batch)
        if n_conditions < 2 and mmd_weight > 0:
            raise ValueError(
                f"The condition column has {n_conditions} category; the MMD needs at least two "
                "conditions (or set mmd_weight=0 for a plain VAE)."
            )
        self.n_input = n_input
        self.n_conditions = n_conditions
        self.n_latent = n_latent
        self.n_hidden = n_hidden
        self.n_layers = n_layers
        self.likelihood = likelihood
        self.dispersion = dispersion
        self.mmd_weight = mmd_weight
        self.kernel_bandwidths = kernel_bandwidths
        self.mmd_mode = mmd_mode
        self.n_labels = n_labels
        self.kl_weight = kl_weight
        self.n_cats_per_cov = n_cats_per_cov
        self.n_continuous_cov = n_continuous_cov
        self.encode_covariates = encode_covariates
        self.mmd_within_batch = mmd_within_batch
        self.covariates_in_y = covariates_in_y
        has_covariates = bool(n_cats_per_cov) or n_continuous_cov > 0
        encoded = n_cats_per_cov if encode_covariates else []
        norm = {"use_batch_norm": use_batch_norm, "use_layer_norm": use_layer_norm}

        self.encoder = Encoder(
            n_input + (n_continuous_cov if encode_covariates else 0),
            n_latent,
            n_cat_list=[n_conditions, *encoded],
            n_layers=n_layers,
            n_hidden=n_hidden,
            dropout_rate=dropout_rate,
            inject_covariates=False,
            **norm,
        )
        self.g1 = FCLayers(
            n_in=n_latent,
            n_out=n_hidden,
            n_cat_list=[n_conditions, *(n_cats_per_cov if covariates_in_y else [])],
            n_cont=n_continuous_cov if covariates_in_y else 0,
            n_layers=1,
            dropout_rate=0.0,
            inject_covariates=False,
            **norm,
        )
        # covariates enter g2's first layer (one layer even when n_layers is 1)
        self.g2 = (
            FCLayers(
                n_in=n_hidden,
                n_out=n_hidden,
                n_cat_list=n_cats_per_cov,
                n_cont=n_continuous_cov,
                n_layers=max(n_layers - 1, 1),
                n_hidden=n_hidden,
                dropout_rate=dropout_rate,
                inject_covariates=False,
                **norm,
            )
            if n_layers > 1 or has_covariates
            else nn.Identity()
        )
        self.mean_head = nn.Linear(n_hidden, n_input)
        # genes × conditions: scvi-tools' query surgery extends condition columns on the last axis
        self.condition_offset = (
            nn.Parameter(torch.zeros(n_input, n_conditions)) if condition_offset else None
        )
        if likelihood == "zinb":
            self.dropout_head = nn.Linear(n_hidden, n_input)
        if likelihood != "normal":
            n_dispersions = n_conditions if dispersion == "gene-condition" else 1
            self.log_theta = nn.Parameter(torch.zeros(n_input, n_dispersions))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a model saved before the offset existed decodes exactly as this one with a zero offset
        key = f"{prefix}condition_offset"
        if self.condition_offset is not None and key not in state_dict:
            state_dict[key] = torch.zeros_like(self.condition_offset)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @torch.no_grad()
    def start_from_profiles(self, gene_means: torch.Tensor) -> None:
        """Start the output bias at the genes' average profile over the conditions.

        ``gene_means`` (genes × conditions): log proportions for counts, means for ``"normal"``.
        The bias is their mean over conditions: the per-gene biases, which Adam moves by about a
        learning rate per step, no longer travel several log units from 0 (on Kang this halved
        the steps needed, ``docs/speed.md``). The condition offset stays at 0: the conditions'
        pooled difference would mix their response with their cell-type composition.
        """
        self.mean_head.bias.copy_(gene_means.to(self.mean_head.bias).mean(1))

    @property
    def summary(self) -> str:
        """The architecture and the MMD settings in one line."""
        return (
            f"{self.n_conditions} conditions, n_latent={self.n_latent}, n_hidden={self.n_hidden}, "
            f"n_layers={self.n_layers}, likelihood={self.likelihood}, "
            f"dispersion={self.dispersion}, mmd_weight={self.mmd_weight}, "
            f"mmd_mode={self.mmd_mode}, kernel_bandwidths={self.kernel_bandwidths}, "
            f"condition_offset={self.condition_offset is not None}"
            + (
                f", covariates: {self.n_cats_per_cov} categories, {self.n_continuous_cov} "
                f"continuous, encode_covariates={self.encode_covariates}, "
                f"covariates_in_y={self.covariates_in_y}"
                if self.n_cats_per_cov or self.n_continuous_cov
                else ""
            )
        )

    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "condition": tensors[REGISTRY_KEYS.BATCH_KEY],
            **covariate_tensors(tensors),
        }

    def _get_generative_input(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        library_size: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """``library_size``: decode every cell at this total count instead of its observed one."""
        library = inference_outputs["library"]
        if library_size is not None:
            library = torch.full_like(library, library_size)
        return {
            "z": inference_outputs["z"],
            "condition": tensors[REGISTRY_KEYS.BATCH_KEY],
            "library": library,
            **covariate_tensors(tensors),
        }

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        condition: torch.Tensor,
        n_samples: int = 1,
        give_mean: bool = False,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | Normal]:
        """Posterior q(z | x, s) (and the covariates, with ``encode_covariates``).

        ``z`` is a sample (``n_samples > 1`` adds a leading axis), or the posterior mean with
        ``give_mean`` (deterministic decoding).
        """
        encoder_input = x if self.likelihood == "normal" else torch.log1p(x)
        encoded = []
        if self.encode_covariates:
            if cont_covs is not None:
                encoder_input = torch.cat([encoder_input, cont_covs], dim=-1)
            if cat_covs is not None:
                encoded = torch.split(cat_covs, 1, dim=1)
        qz_m, qz_v, z = self.encoder(encoder_input, condition, *encoded)
        qz = Normal(qz_m, qz_v.sqrt())
        if give_mean:
            z = qz.loc
        elif n_samples > 1:
            z = qz.rsample((n_samples,))
        return {"qz": qz, "z": z, "library": x.sum(-1, keepdim=True)}

    @auto_move_data
    def decoder_layer(
        self,
        z: torch.Tensor,
        condition: torch.Tensor,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``y = g1(z, s)``: the first decoder layer, where the MMD compares the conditions.

        With ``covariates_in_y``, ``y = g1(z, s, c)``: the covariates meet the condition there,
        so that a donor's own response can be formed where the condition's is.
        """
        if not self.covariates_in_y:
            return self.g1(z, condition)
        cats = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
        return self.g1(z, condition, *cats, cont=cont_covs)

    @auto_move_data
    def generative(
        self,
        z: torch.Tensor,
        condition: torch.Tensor,
        library: torch.Tensor,
        transform_batch: int | None = None,
        cat_covs: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor | torch.distributions.Distribution]:
        """Decode ``z`` under ``condition``; returns ``y`` (the MMD layer) and ``px``.

        ``z`` may carry a leading sample axis; ``condition``, ``library`` and the covariates are
        per cell. ``transform_batch``: decode every cell under this condition code instead
        (condition transfer; scvi-tools' ``RNASeqMixin`` passes it as for its own VAE).
        """
        if transform_batch is not None:
            condition = torch.full_like(condition, transform_batch)
        y = self.decoder_layer(z, condition, cat_covs, cont_covs)
        if isinstance(self.g2, nn.Identity):
            h = y
        else:
            cats = torch.split(cat_covs, 1, dim=1) if cat_covs is not None else ()
            h = self.g2(y, *cats, cont=cont_covs)
        if self.condition_offset is None:
            mean = self.mean_head(h)
        else:
            # bias + offset looked up per cell, the rows the product adds to (a one-hot product
            # ran in BLAS's slow skinny shapes; adding them after it took two passes more)
            rows = self.mean_head.bias + self.condition_offset.T
            rows = nn.functional.embedding(condition.reshape(-1).long(), rows)
            weight = self.mean_head.weight.T
            mean = torch.addmm(rows, h, weight) if h.dim() == 2 else (h @ weight).add_(rows)
        if self.likelihood == "normal":
            # scvi-tools' Normal: get_normalized_expression reads the mean through `normal_mu`
            return {"y": y, "px": NormalWithMean(mean, torch.ones_like(mean), normal_mu=mean)}
        px_scale = torch.softmax(mean, dim=-1)
        if self.dispersion == "gene-condition":
            # (cells, genes): broadcasts over a leading sample axis of z
            theta = self.log_theta.exp()[:, condition.reshape(-1).long()].T
        else:
            theta = self.log_theta.exp().T
        px_rate = library * px_scale
        if self.likelihood == "zinb":
            px = ZeroInflatedNegativeBinomial(
                mu=px_rate, theta=theta, zi_logits=self.dropout_head(h), scale=px_scale
            )
        else:
            px = SparseNegativeBinomial(mu=px_rate, theta=theta, scale=px_scale)
        return {"y": y, "px": px}

    def loss(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor | Normal],
        generative_outputs: dict[str, torch.Tensor | torch.distributions.Distribution],
        kl_weight: float = 1.0,
    ) -> LossOutput:
        """Per-cell reconstruction + β·KL, batch-averaged, plus the weighted MMD on ``y``."""
        x = tensors[REGISTRY_KEYS.X_KEY]
        condition = tensors[REGISTRY_KEYS.BATCH_KEY]
        px = generative_outputs["px"]
        if isinstance(px, SparseNegativeBinomial):  # given x's non-zero positions, if loaded
            reconstruction = -px.log_prob_sum(x, nonzero=tensors.get(COUNT_POSITIONS_KEY))
        else:
            reconstruction = -px.log_prob(x).sum(-1)
        qz = inference_outputs["qz"]
        kl = 0.5 * (qz.loc.square() + qz.variance - qz.variance.log() - 1).sum(-1)  # to N(0, I)
        labels = tensors.get(REGISTRY_KEYS.LABELS_KEY) if self.mmd_mode != "global" else None
        n_labels = self.n_labels or None
        if self.mmd_within_batch and self.mmd_mode != "global":
            labels, n_labels = mmd_strata(
                labels, tensors[REGISTRY_KEYS.CAT_COVS_KEY], self.n_labels, self.n_cats_per_cov[0]
            )
        mmd = pairwise_condition_mmd(
            generative_outputs["y"],
            condition,
            self.kernel_bandwidths,
            n_conditions=self.n_conditions,
            labels=labels,
            n_labels=n_labels,
            mode=self.mmd_mode,
        )
        elbo_terms = reconstruction + kl_weight * self.kl_weight * kl
        loss = elbo_terms.mean() + self.mmd_weight * mmd
        return LossOutput(
            loss=loss,
            reconstruction_loss=reconstruction,
            kl_local=kl,
            extra_metrics={"mmd": mmd.detach()},
        )
