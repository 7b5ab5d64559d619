"""``train()``: trVAE's defaults and safeguards around scvi-tools' training loop."""

from __future__ import annotations

import warnings

from scvi import REGISTRY_KEYS, settings
from scvi.model.base import UnsupervisedTrainingMixin
from scvi.utils._docstrings import devices_dsp

from ..._threads import training_thread_scope
from ...train._callbacks import RestoreBestWeights, StopOnNonFiniteLoss
from ...train._training_settings import training_settings
from .._backed import check_backed_file
from .._validation import check_condition_sizes


class TrainingMixin(UnsupervisedTrainingMixin):
    """Training on condition-balanced minibatches, with defaults sized in optimiser steps."""

    @devices_dsp.dedent
    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        batch_size: int = 128,
        early_stopping: bool = True,
        early_stopping_patience: int | None = None,
        min_cells_per_condition: int = 8,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        **trainer_kwargs,
    ):
        """Train the model on condition-balanced minibatches.

        Parameters
        ----------
        max_epochs
            Default: a budget of optimiser steps (passed to Lightning as ``max_steps``) of 5
            epochs, at least 420 and at most 4,000 steps, and never less than one epoch
            (``BUDGET_EPOCHS``, ``MIN_STEPS``, ``MAX_STEPS``). Passing it trains at most that
            many epochs, with no step budget.
        %(param_accelerator)s
        %(param_devices)s
        train_size, validation_size
            Fractions of cells for training and validation (default 0.9 / 0.1).
        batch_size
            Cells per minibatch (per process under DDP).
        early_stopping
            Stop when ``validation_loss`` (ELBO terms + weighted MMD) has not improved for
            ``early_stopping_patience`` epochs after the KL warm-up, and restore the weights of
            the best epoch after the warm-up. Disabled by scvi-tools under DDP, and here (with a
            warning) when there are no validation cells (``train_size=1.0`` or
            ``validation_size=0``).
        early_stopping_patience
            Epochs without improvement before stopping. Default: 150 optimiser steps
            (``PATIENCE_STEPS``) rounded up to whole epochs, at least 2.
        min_cells_per_condition
            Floor of cells of each condition in every minibatch (small conditions are resampled).
        plan_kwargs
            Keyword arguments of the training plan (scvi-tools' ``TrainingPlan``). Defaults here:
            ``lr=6e-3``, warmed up over the first 5 % of the run and decayed to 0 at its last
            step by a cosine (``lr_schedule="cosine"``, ``lr_warmup_steps``; ``None`` or
            ``reduce_lr_on_plateau=True`` instead), ``gene_lr_scale=10`` (the per-gene
            parameters' rate relative to ``lr``), and a KL warm-up over the first quarter of
            the run, at most 150 optimiser steps (``n_steps_kl_warmup``); scvi-tools' own
            defaults (1e-3, 400 epochs) leave the KL under-weighted for most of a short run.
            ``n_epochs_kl_warmup`` counts in epochs.
        datasplitter_kwargs
            Keyword arguments of :class:`~sctrvae.ConditionBalancedDataSplitter`, e.g.
            ``{"device_resident": True}``: copy the count matrix to the training device once and
            slice every minibatch there (for a GPU starved by the data loader).
        **trainer_kwargs
            Keyword arguments of :class:`~scvi.train.Trainer` (``strategy``,
            ``gradient_clip_val``, ``enable_progress_bar``, ``max_steps``, ...).

        Notes
        -----
        Torch threads for this call (the caller's count is restored afterwards):
        ``scvi.settings.num_threads`` if set, else ``OMP_NUM_THREADS`` if set, else every CPU
        this process may use (affinity, cgroup quota); only when torch was loaded before
        sctrvae (idle threads then spin), the CPUs other processes leave idle now. The count is
        applied at every call because scanpy's numba functions reset torch's OpenMP thread
        count to all cores whenever they run.
        """
        check_condition_sizes(
            self.adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY), self.conditions
        )
        check_backed_file(self.adata)
        callbacks = trainer_kwargs.pop("callbacks", None) or []
        run = training_settings(
            self.adata.n_obs,
            batch_size=batch_size,
            max_epochs=max_epochs,
            train_size=train_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            min_cells_per_condition=min_cells_per_condition,
            plan_kwargs=plan_kwargs,
            datasplitter_kwargs=datasplitter_kwargs,
            trainer_kwargs=trainer_kwargs,
        )
        if run.no_validation:
            warnings.warn(
                "There are no validation cells: training runs all max_epochs without early "
                "stopping or restoring the best weights.",
                UserWarning,
                stacklevel=2,
            )
        # a diverged run raises instead of leaving NaN weights behind
        stop_on_nan = StopOnNonFiniteLoss()
        callbacks = [*callbacks, stop_on_nan]
        if run.restore_best:
            callbacks.append(RestoreBestWeights(run.trainer_kwargs["early_stopping_monitor"]))
        # scvi-tools leaves the module in eval mode after training or loading, and Lightning keeps
        # the mode it finds: without this a second train() (or a resume) runs without dropout
        self.module.train()
        with training_thread_scope(reproducible=settings.seed is not None):
            try:
                return super().train(
                    max_epochs=run.max_epochs,
                    accelerator=accelerator,
                    devices=devices,
                    train_size=train_size,
                    validation_size=validation_size,
                    batch_size=batch_size,
                    early_stopping=run.early_stopping,
                    plan_kwargs=run.plan_kwargs,
                    datasplitter_kwargs=run.datasplitter_kwargs,
                    callbacks=callbacks,
                    **run.trainer_kwargs,
                )
            except Exception as error:
                # a non-finite loss not read yet (off CPU) can make a later step fail first
                if stop_on_nan.error is None:
                    raise
                raise stop_on_nan.error from error
