"""Trains a small model with checkpoints, for ``test_resume.py``.

``python resume_script.py OUT MODE [ddp]``; MODE ``full`` trains uninterrupted, ``kill`` stops
(hangs) at step ``KILL_AT`` for the test to kill it, ``resume`` resumes from ``OUT/last.ckpt``.
``ddp``: two CPU processes (Lightning re-runs this script for the second). Rank 0 writes
``OUT/MODE.pt``: the final weights, the number of optimiser steps and the best epoch.
"""

import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import scvi
import torch
import torch.distributed as dist

import sctrvae
from sctrvae.train._callbacks import RestoreBestWeights

EVERY_N_STEPS = 3
#: Kill after this step; the last checkpoint before it (step 9) is one batch into an epoch
#: (4 batches an epoch on one process, 2 per rank under DDP).
KILL_AT = 10


class Hang(pl.Callback):
    """Writes ``OUT/hanging`` and waits to be killed, in the middle of an epoch."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == KILL_AT:
            if trainer.global_rank == 0:
                (self.out / "hanging").write_text(str(trainer.global_step))
            time.sleep(600)


if __name__ == "__main__":
    out, mode, ddp = Path(sys.argv[1]), sys.argv[2], sys.argv[3:] == ["ddp"]
    out.mkdir(exist_ok=True)
    scvi.settings.seed = 0  # a reproducible run, as a user who wants to resume would set
    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=3)
    callbacks = [sctrvae.TrainingCheckpoint(out / "last.ckpt", every_n_steps=EVERY_N_STEPS)]
    if mode == "kill":
        callbacks.append(Hang(out))
    model.train(
        max_epochs=6,
        batch_size=48,
        # the KL warm-up (and with it the choice of the best epoch) runs across the kill
        plan_kwargs={"n_steps_kl_warmup": 12},
        callbacks=callbacks,
        ckpt_path=str(out / "last.ckpt") if mode == "resume" else None,
        enable_progress_bar=False,
        **({"accelerator": "cpu", "devices": 2, "strategy": "ddp"} if ddp else {}),
    )
    trainer = model.trainer
    if trainer.global_rank == 0:
        best = [c.best_epoch for c in trainer.callbacks if isinstance(c, RestoreBestWeights)]
        result = {
            "weights": model.module.state_dict(),
            "global_step": trainer.global_step,
            "best_epoch": best[0] if best else None,
            "kl_weight": float(trainer.lightning_module.kl_weight),
        }
        torch.save(result, out / f"{mode}.pt")
    # as in ddp_script.py: a process group left to interpreter exit can abort in gloo's teardown
    if dist.is_initialized():
        dist.destroy_process_group()
