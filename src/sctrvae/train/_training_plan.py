"""scvi-tools' TrainingPlan: epoch metrics summed on the device, fused Adam, cosine schedule."""

from __future__ import annotations

import math
from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput
from scvi.train import TrainingPlan
from torch.optim.lr_scheduler import LambdaLR

from .._utils import mixing_score
from ..module._covariates import covariate_tensors
from ._optimizer import SizedGroupsAdam, split_by_size

#: Epoch-level metrics, in the order of the accumulator; each is a mean over the epoch's cells.
#: TRVAEModule has no global KL term, so scvi-tools' ``kl_global_*`` (always 0) is not logged.
_METRICS = ("loss", "elbo", "reconstruction_loss", "kl_local", "mmd")
#: Validation cells whose mixing is scored each epoch: the first ones of the (unshuffled)
#: validation loader, the same every epoch; a kNN over more would cost more than the epoch.
MIXING_CELLS = 2000


#: The module's per-gene parameters, trained at ``gene_lr_scale`` times the learning rate: the
#: output layer (one row and one bias per gene), the condition offset and the dispersion.
GENE_PARAMETERS = ("mean_head.weight", "mean_head.bias", "condition_offset", "log_theta")


def _per_gene_parameters(module) -> list[torch.Tensor]:
    params = dict(module.named_parameters())
    return [params[n] for n in GENE_PARAMETERS if n in params]


def cosine_lr_factor(step: int, total_steps: int, warmup_steps: int = 0) -> float:
    """Multiplier of the learning rate at optimiser step ``step`` (from 0) of ``total_steps``.

    A linear warm-up to 1 over the first ``warmup_steps`` steps, then a half cosine from 1 to 0
    that reaches 0 after the last step, so that the run ends on small steps wherever its
    budget ends.
    """
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    decay = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class TRVAETrainingPlan(TrainingPlan):
    """:class:`~scvi.train.TrainingPlan` with cheaper per-step bookkeeping.

    With the default ``on_step=False``, scvi-tools logs seven metrics through Lightning on every
    step, about a tenth of a CPU training step on Kang-sized data. Here each step adds its sums
    to one tensor on the device instead (no host synchronisation), and the same epoch means are
    logged once per epoch under the same names (``train_loss``, ``elbo_train``, ...,
    ``validation_loss``), summed over the processes under DDP. ``kl_weight`` is logged once per
    epoch (its value at the epoch's last step). ``on_step=True`` takes scvi-tools' path.

    Adam is the fused implementation where the parameters' device has one (CPU and CUDA): the
    same update, a third of the time of the per-tensor loop on CPU. Its parameter groups are
    split by tensor size, the small tensors updating on one thread
    (:class:`~sctrvae.train._optimizer.SizedGroupsAdam`).

    With ``log_mixing`` (default), every validation epoch also logs how well the conditions mix
    in ``y`` and in ``z`` among the validation cells (``mixing_y_validation``,
    ``mixing_z_validation``: :func:`~sctrvae.metrics.condition_mixing`, within labels when
    ``labels_key`` was registered), beside ``mmd_validation``, over the first
    :data:`MIXING_CELLS` validation cells. An epoch where no label holds enough cells of two
    conditions logs nothing.

    With ``lr_schedule="cosine"``, the learning rate warms up linearly over ``lr_warmup_steps``
    and then follows :func:`cosine_lr_factor` to 0 at the trainer's last step
    (``max_steps``, or ``max_epochs`` × the batches of an epoch), updated at every step.
    ``gene_lr_scale`` multiplies the learning rate of the per-gene parameters
    (:data:`GENE_PARAMETERS`).
    """

    def __init__(
        self,
        *args,
        log_mixing: bool = True,
        lr_schedule: Literal["cosine"] | None = None,
        lr_warmup_steps: int = 0,
        gene_lr_scale: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if lr_schedule not in (None, "cosine"):
            raise ValueError(f"lr_schedule must be None or 'cosine', not {lr_schedule!r}.")
        if lr_schedule is not None and self.reduce_lr_on_plateau:
            raise ValueError("Pass either lr_schedule or reduce_lr_on_plateau=True, not both.")
        self.log_mixing = log_mixing
        self.lr_schedule = lr_schedule
        self.lr_warmup_steps = lr_warmup_steps
        self.gene_lr_scale = gene_lr_scale
        self._sums: dict[str, torch.Tensor | None] = {"train": None, "validation": None}
        self._representations: list[dict[str, torch.Tensor]] = []

    def _optimizer_creator_fn(self, optimizer_cls):
        def create(params):
            params = list(params)
            fused = all(p.device.type in ("cpu", "cuda") for p in params)
            groups = [{"params": params}]
            if self.gene_lr_scale != 1.0:
                gene = {id(p) for p in _per_gene_parameters(self.module)}
                groups = [
                    {"params": [p for p in params if id(p) not in gene]},
                    {
                        "params": [p for p in params if id(p) in gene],
                        "lr": self.lr * self.gene_lr_scale,
                    },
                ]
            # no empty group where every per-gene (or every other) parameter is frozen
            groups = [g for g in groups if g["params"]] or groups[:1]
            cls = optimizer_cls
            if cls is torch.optim.Adam:
                cls, groups = SizedGroupsAdam, split_by_size(groups) or groups
            return cls(
                groups, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, fused=fused
            )

        return create

    def configure_optimizers(self):
        """Adam, and with ``lr_schedule="cosine"`` its per-step warm-up and cosine decay."""
        config = super().configure_optimizers()
        if self.lr_schedule == "cosine":
            total = int(self.trainer.estimated_stepping_batches)
            warmup = min(self.lr_warmup_steps, total)
            scheduler = LambdaLR(
                config["optimizer"], lambda step: cosine_lr_factor(step, total, warmup)
            )
            config["lr_scheduler"] = {"scheduler": scheduler, "interval": "step"}
        return config

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        # scvi-tools logs under torch.inference_mode; Lightning's DDP reduction later rescales
        # the logged tensors in place outside that mode, which raises
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)

    def training_step(self, batch, batch_idx):
        """One optimiser step's loss; its metrics are added to the epoch's sums."""
        if self.on_step:
            return super().training_step(batch, batch_idx)
        if "kl_weight" in self.loss_kwargs:
            self.loss_kwargs["kl_weight"] = self.kl_weight
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._accumulate("train", loss_output)
        return loss_output.loss

    def validation_step(self, batch, batch_idx):
        """Add a validation batch's metrics to the epoch's sums."""
        if self.on_step:
            return super().validation_step(batch, batch_idx)
        inference_outputs, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        self._accumulate("validation", loss_output)
        collected = sum(b["z"].shape[0] for b in self._representations)
        if self.log_mixing and collected < MIXING_CELLS:
            labels = batch.get(REGISTRY_KEYS.LABELS_KEY)
            condition = batch[REGISTRY_KEYS.BATCH_KEY]
            z = inference_outputs["qz"].loc  # the posterior mean, as get_latent_representation
            self._representations.append(
                {
                    "y": self.module.decoder_layer(z, condition, **covariate_tensors(batch)),
                    "z": z,
                    "condition": condition,
                    "labels": torch.zeros_like(condition) if labels is None else labels,
                }
            )

    @torch.no_grad()
    def _accumulate(self, mode: str, loss_output: LossOutput) -> None:
        n = loss_output.n_obs_minibatch
        mmd = loss_output.extra_metrics.get("mmd", torch.zeros((), device=self.device))
        rec, kl = loss_output.reconstruction_loss_sum, loss_output.kl_local_sum
        # sums over the batch's cells; the last entry counts the cells
        step = torch.stack(
            [loss_output.loss.detach() * n, rec + kl, rec, kl, mmd * n, torch.full_like(rec, n)]
        )
        sums = self._sums[mode]
        self._sums[mode] = step if sums is None else sums + step

    def _log_epoch(self, mode: str) -> None:
        sums, self._sums[mode] = self._sums[mode], None
        if sums is None:
            return
        sums = self.trainer.strategy.reduce(sums, reduce_op="sum")
        means = sums[:-1] / sums[-1]
        for name, value in zip(_METRICS, means, strict=True):
            key = f"{mode}_loss" if name == "loss" else f"{name}_{mode}"
            self.log(key, value, on_step=False, on_epoch=True, prog_bar=key == "train_loss")

    def on_train_epoch_end(self):
        """Log the epoch's training means (and the KL weight reached)."""
        if not self.on_step:
            self._log_epoch("train")
            if "kl_weight" in self.loss_kwargs:
                self.log("kl_weight", self.loss_kwargs["kl_weight"], on_step=False, on_epoch=True)
        super().on_train_epoch_end()

    def on_validation_epoch_end(self):
        """Log the epoch's validation means."""
        if not self.on_step:
            self._log_epoch("validation")
            self._log_mixing()
        super().on_validation_epoch_end()

    def _log_mixing(self) -> None:
        batches, self._representations = self._representations, []
        if not batches:
            return
        cells = {k: torch.cat([b[k] for b in batches]).cpu().numpy() for k in batches[0]}
        for rep in ("y", "z"):
            score = mixing_score(cells[rep], cells["condition"], cells["labels"])
            if not math.isnan(score):
                self.log(f"mixing_{rep}_validation", score, on_step=False, on_epoch=True)
