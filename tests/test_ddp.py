"""Training under Lightning DDP (two CPU processes, gloo) through scvi-tools' Trainer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import sctrvae

SCRIPT = Path(__file__).with_name("ddp_script.py")


class RecordBatches(pl.Callback):
    """Writes, per rank, the cell ids and condition codes of every training batch."""

    def __init__(self, folder):
        self.folder = str(folder)
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        ids = batch["X"][:, 0].long().tolist()
        conditions = batch["batch"].reshape(-1).long().tolist()
        self.seen.append({"epoch": trainer.current_epoch, "ids": ids, "conditions": conditions})

    def on_train_end(self, trainer, pl_module):
        path = Path(self.folder) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(self.seen))


def model_with_cell_ids():
    """A small model on data whose first gene holds each cell's row number."""
    adata = sctrvae.datasets.simulate(n_cells=400, n_genes=30, seed=0)
    X = adata.X.toarray()
    X[:, 0] = np.arange(adata.n_obs)  # a unique id per cell in the counts themselves
    adata.X = X
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    return sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=3)


def train_on_two_ranks(model, strategy, folder, **kwargs):
    """Two epochs on two CPU processes, recording every rank's batches in ``folder``."""
    model.train(
        max_epochs=2,
        batch_size=32,
        accelerator="cpu",
        devices=2,
        strategy=strategy,
        callbacks=[RecordBatches(folder)],
        enable_progress_bar=False,
        **kwargs,
    )


def check_shards(folder, train_indices, n_epochs=2):
    """Each epoch the ranks' batches cover the training cells exactly once, all balanced."""
    seen = [json.loads((folder / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(n_epochs):
        cells = [set(i for b in s if b["epoch"] == epoch for i in b["ids"]) for s in seen]
        assert cells[0].isdisjoint(cells[1])
        assert cells[0] | cells[1] == set(train_indices)
    for s in seen:
        for b in s:
            assert set(b["conditions"]) == {0, 1}


@pytest.mark.parametrize("device_resident", [False, True])
def test_ddp_ranks_train_on_disjoint_balanced_shards(tmp_path, device_resident):
    model = model_with_cell_ids()
    initial = {k: v.clone() for k, v in model.module.state_dict().items()}
    train_on_two_ranks(
        model, "ddp_spawn", tmp_path, datasplitter_kwargs={"device_resident": device_resident}
    )
    check_shards(tmp_path, model.train_indices)
    # the weights trained in the spawned processes are back in this one
    trained = model.module.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in initial.items())
    pred = model.predict(target_condition="stimulated")
    assert np.isfinite(pred.X).all()


@pytest.mark.parametrize("launcher", ["lightning", "torchrun"])
def test_script_launched_ddp_without_seed_shares_one_split(tmp_path, launcher):
    # every process runs the script and builds its own data splitter; no seed anywhere (the
    # autouse fixture's seed_everything leaves PL_GLOBAL_SEED in this process's environment)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PL_")}
    command = [str(SCRIPT), str(tmp_path)]
    if launcher == "torchrun":
        command = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *command]
    subprocess.run([sys.executable, *command], env=env, check=True, timeout=300)
    splits = [json.loads((tmp_path / f"split{r}.json").read_text()) for r in range(2)]
    assert splits[0] == splits[1]
    train, validation = splits[0]["train"], splits[0]["validation"]
    assert len(validation) == 40
    assert sorted(train + validation) == list(range(400))
    # the shards partition the training cells, so no validation cell is ever trained on
    check_shards(tmp_path, train)
