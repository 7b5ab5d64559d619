"""Times scArches' TRVAE on one .h5ad; run by scale.py in its own environment (old pins).

Prints one JSON line. The timed span of an epoch is the loop over training minibatches, from
scArches' ``on_epoch_begin`` to its ``on_epoch_end``; its validation pass is skipped.
``--max-batches`` caps the minibatches per epoch (scArches' ``n_samples``) on large data.
"""

import argparse
import json
import os
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scarches as sca
import torch
from scarches.trainers.trvae.unsupervised import trVAETrainer

parser = argparse.ArgumentParser()
parser.add_argument("h5ad")
parser.add_argument("--epochs", type=int, required=True)
parser.add_argument("--batch-size", type=int, required=True)
parser.add_argument("--threads", type=int, required=True)
parser.add_argument("--n-hidden", type=int, required=True)
parser.add_argument("--n-layers", type=int, required=True)
parser.add_argument("--n-latent", type=int, required=True)
parser.add_argument("--dropout", type=float, required=True)
parser.add_argument("--max-batches", type=int, required=True)
parser.add_argument(
    "--early-stopping",
    action="store_true",
    help="train as scArches does by default: validation and early stopping on; report the "
    "epochs run and the whole training's wall time",
)
args = parser.parse_args()

torch.set_num_threads(args.threads)
load = os.getloadavg()[0]
adata = ad.read_h5ad(args.h5ad)
conditions = list(adata.obs["condition"].cat.categories)
model = sca.models.TRVAE(
    adata,
    condition_key="condition",
    conditions=conditions,
    hidden_layer_sizes=[args.n_hidden] * args.n_layers,
    latent_dim=args.n_latent,
    dr_rate=args.dropout,
    mmd_on="y",  # trVAE's MMD layer, as in sctrvae
    recon_loss="nb",
)
cuda = torch.cuda.is_available()
spans: list[float] = []
begin, end = trVAETrainer.on_epoch_begin, trVAETrainer.on_epoch_end


def on_epoch_begin(self, lr, eps):
    if cuda:
        torch.cuda.synchronize()
    spans.append(-time.perf_counter())
    begin(self, lr, eps)


def on_epoch_end(self):
    if cuda:
        torch.cuda.synchronize()
    spans[-1] += time.perf_counter()
    end(self)


trVAETrainer.on_epoch_begin, trVAETrainer.on_epoch_end = on_epoch_begin, on_epoch_end
if not args.early_stopping:
    # the validation pass is not timed; skipping it saves minutes at 1M cells
    trVAETrainer.validate = lambda self: None
n_train = round(0.9 * adata.n_obs)  # scArches' default train_frac
cells_per_epoch = min(n_train, args.max_batches * args.batch_size)
start = time.perf_counter()
model.train(
    n_epochs=args.epochs,
    batch_size=args.batch_size,
    n_samples=cells_per_epoch,
    use_early_stopping=args.early_stopping,
    monitor=False,
    seed=0,
)
train_seconds = time.perf_counter() - start
seconds = float(np.mean(spans))
# VmHWM: peak RSS of this process (ru_maxrss would include the parent's, inherited over exec)
status = Path("/proc/self/status").read_text().splitlines()
peak_rss_mb = next(int(x.split()[1]) / 1024 for x in status if x.startswith("VmHWM:"))
print(
    json.dumps(
        {
            "tool": "scArches TRVAE",
            "path": "in-memory",
            "epochs": args.epochs,
            "cells_timed_per_epoch": cells_per_epoch,
            "full_epoch_timed": cells_per_epoch >= n_train,
            "cells_per_s": cells_per_epoch / seconds,
            "peak_rss_mb": peak_rss_mb,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_avg": load,
            "tool_version": sca.__version__ if hasattr(sca, "__version__") else "0.6.1",
            "epochs_run": len(spans),
            "train_seconds": train_seconds,
        }
    )
)
