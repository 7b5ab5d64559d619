"""Training under Lightning DDP (two CPU processes, gloo) through scvi-tools' Trainer."""

import json
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch

import sctrvae


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


@pytest.mark.parametrize("device_resident", [False, True])
def test_ddp_ranks_train_on_disjoint_balanced_shards(tmp_path, device_resident):
    adata = sctrvae.datasets.simulate(n_cells=400, n_genes=30, seed=0)
    X = adata.X.toarray()
    X[:, 0] = np.arange(adata.n_obs)  # a unique id per cell in the counts themselves
    adata.X = X
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata, n_hidden=16, n_latent=3)
    initial = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(
        max_epochs=2,
        batch_size=32,
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        callbacks=[RecordBatches(tmp_path)],
        enable_progress_bar=False,
        datasplitter_kwargs={"device_resident": device_resident},
    )
    seen = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        cells = [set(i for b in s if b["epoch"] == epoch for i in b["ids"]) for s in seen]
        assert cells[0].isdisjoint(cells[1])
        assert len(cells[0]) + len(cells[1]) == len(model.train_indices)
    for s in seen:
        for b in s:
            assert set(b["conditions"]) == {0, 1}
    # the weights trained in the spawned processes are back in this one
    trained = model.module.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in initial.items())
    pred = model.predict(target_condition="stimulated")
    assert np.isfinite(pred.X).all()
