"""Checkpoints during training, from which a killed run resumes to where it would have got."""

from __future__ import annotations

import os
import random

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist


def _rng_state() -> dict:
    """The random number generator states of this process: torch, its GPU, numpy, Python."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": _plain(np.random.get_state()),  # noqa: NPY002 (the global state code may draw from)
        "python": random.getstate(),
    }


def _plain(numpy_state: tuple) -> tuple:
    """The numpy state without arrays: Lightning reads checkpoints with ``weights_only=True``."""
    name, keys, *rest = numpy_state
    return (name, keys.tolist(), *rest)


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))  # noqa: NPY002
    random.setstate(state["python"])


class TrainingCheckpoint(pl.Callback):
    """Save a Lightning checkpoint of the whole training state every ``every_n_steps`` steps.

    The checkpoint holds what Lightning saves (weights, optimiser, step and epoch counters, the
    callbacks' states: best weights, early stopping) and, beyond that, the random number
    generator states of every process and the position in the epoch's minibatches (saved by
    :class:`~sctrvae.ConditionBalancedDataSplitter`). Training again with
    ``ckpt_path=path`` and the same data and arguments therefore continues where the checkpoint
    was taken, to the weights and number of steps an uninterrupted run reaches. The file is
    replaced in one rename (Lightning writes it aside first), so a run killed while saving keeps
    the previous checkpoint.

    Parameters
    ----------
    path
        File of the checkpoint, replaced at every save.
    every_n_steps
        Optimiser steps between saves.

    Examples
    --------
    >>> checkpoint = sctrvae.TrainingCheckpoint("run/last.ckpt", every_n_steps=100)
    >>> model.train(callbacks=[checkpoint])
    >>> # after a kill: the same data, arguments and seed, resumed from the checkpoint
    >>> model.train(callbacks=[checkpoint], ckpt_path="run/last.ckpt")
    """

    def __init__(self, path: str | os.PathLike, every_n_steps: int = 100):
        super().__init__()
        if not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}.")
        self.path = os.fspath(path)
        self.every_n_steps = every_n_steps
        self._saved_step = 0
        self._saving: list[dict] | None = None
        self._restoring: list[dict] | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        # with gradient accumulation several batches end at the same step: save after the first
        if step == 0 or step % self.every_n_steps or step == self._saved_step:
            return
        self._saved_step = step
        # every process's generators, so that each rank draws on as if never interrupted
        states = [_rng_state()]
        if dist.is_available() and dist.is_initialized():
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, _rng_state())
        self._saving = states
        try:
            trainer.save_checkpoint(self.path)
        finally:
            self._saving = None

    def on_train_start(self, trainer, pl_module) -> None:
        # after the data loaders were set up (which draw seeds): the next draw is the next step's
        if self._restoring is not None:
            _set_rng_state(self._restoring[trainer.global_rank])
            self._restoring = None

    def state_dict(self) -> dict:
        return {"rng": self._saving}

    def load_state_dict(self, state_dict: dict) -> None:
        self._restoring = state_dict.get("rng")
