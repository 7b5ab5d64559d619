"""Speed as ratios: a Kang fold of sctrvae against scArches' TRVAE, and a step against matmuls.

    python benchmarks/kang_vs_scarches.py     # writes results/kang_vs_scarches.{csv,md}

For each Kang cell type held out (its stimulated cells; seed 0), in one run on one machine:

- **sctrvae**: the quickstart fold, ``setup_anndata`` + ``TRVAEModel`` + ``train()`` at the
  defaults + ``predict(readout="calibrated")`` of the type's control cells: wall seconds, the
  optimiser steps, and seconds per step of ``train()``.
- **scArches TRVAE** (scarches 0.6.1, its own environment, see ``scale.py``), the same
  architecture (2 × 128 hidden, latent 10, dropout 0.1, NB, MMD on the first decoder layer),
  batch 128, on the same training cells: seconds per epoch of its training loop over
  ``--scarches-epochs`` epochs (validation not timed), hence seconds per step. scArches has no
  prediction API and trains 400 epochs by default, with early stopping after 20 epochs without
  improvement: the report gives the fold's ratio against that default budget and against the
  shortest run early stopping allows (21 epochs), both from the measured epoch time.
- **Reference**: one Adam step of a plain torch autoencoder with the same dense shapes (genes +
  2 conditions → 128 → 128 → 2 × 10; 10 + 2 → 128 → 128 → genes), a 128-cell minibatch, MSE on
  ``log1p`` counts: what the matmuls of a step cost on this machine, whatever its speed.

The ratios (sctrvae's step / reference step; sctrvae's fold / scArches' fold) hold across hosts
where absolute seconds do not.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import KANG_FOLDS, RESULTS, parser, quiet, report_header

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data-scale"
ARCHITECTURE = ["--n-hidden", "128", "--n-layers", "2", "--n-latent", "10", "--dropout", "0.1"]
BATCH = 128
#: scArches TRVAE.train's defaults: epochs, and early stopping's patience.
SCARCHES_EPOCHS, SCARCHES_PATIENCE = 400, 20


def reference_step_ms(n_genes: int, n_conditions: int = 2, repeats: int = 50) -> float:
    """Median milliseconds of one Adam step of a plain autoencoder of trVAE's dense shapes."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Linear(n_genes + n_conditions, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, 20),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(10 + n_conditions, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
        nn.Linear(128, n_genes),
    )  # fmt: skip
    optimiser = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()])
    x = torch.log1p(torch.poisson(torch.full((BATCH, n_genes), 0.3)))
    c = nn.functional.one_hot(torch.arange(BATCH) % n_conditions).float()
    times = []
    for i in range(repeats + 5):
        start = time.perf_counter()
        z = encoder(torch.cat([x, c], 1))[:, :10]
        loss = ((decoder(torch.cat([z, c], 1)) - x) ** 2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if i >= 5:
            times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def sctrvae_fold(data, group: str) -> dict:
    """The quickstart fold, timed, with the median training step and the fold's score."""
    import lightning.pytorch as pl
    import scvi

    import sctrvae
    from sctrvae.tl._held_out import score_change

    class StepTimer(pl.Callback):
        """Wall time of each training step (forward, backward, optimiser), batch to batch."""

        def __init__(self):
            self.seconds = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.seconds.append(time.perf_counter() - self.start)

    condition, _, _, target = KANG_FOLDS
    ((keep, (held,)),) = data.folds([(group,)])
    adata, timer = data.adata, StepTimer()
    start = time.perf_counter()
    train = adata[keep].copy()
    scvi.settings.seed = 0
    sctrvae.TRVAEModel.setup_anndata(train, condition_key=condition)
    model = sctrvae.TRVAEModel(train)
    fit_start = time.perf_counter()
    model.train(enable_progress_bar=False, callbacks=[timer])
    fit = time.perf_counter() - fit_start
    predicted = adata[held.source_cells].copy()
    model.predict(
        predicted, target_condition=target, readout="calibrated", key_added="pred",
        return_anndata=False,
    )  # fmt: skip
    fold = time.perf_counter() - start
    change = predicted.layers["pred"].mean(0, dtype=np.float64) - held.source_mean
    score = score_change(change, held.real_change, held.source_mean, held.deg_mask)
    return {
        "fold_s": fold,
        "steps": model.trainer.global_step,
        "fit_per_step_ms": 1e3 * fit / model.trainer.global_step,
        "step_ms": 1e3 * float(np.median(timer.seconds)),
        "pearson_delta_deg": score["pearson_delta_deg"],
    }


def scarches_fold(adata, group: str, epochs: int, early_stopping: bool = False) -> dict:
    """scArches' training on the fold's cells, in its own environment.

    Without ``early_stopping``: ``epochs`` epochs, validation skipped, the training loop timed.
    With it: scArches' default ``train`` (400 epochs, validation, early stopping), timed whole.
    """
    sys.path.insert(0, str(HERE))
    import scale

    condition, group_key, _, target = KANG_FOLDS
    held = ((adata.obs[group_key] == group) & (adata.obs[condition] == target)).to_numpy()
    DATA.mkdir(exist_ok=True)
    path = DATA / f"kang_without_{group}.h5ad"
    train = adata[~held].copy()
    train.uns.clear()
    train.write_h5ad(path)  # uncompressed, no uns: anndata 0.10 reads it
    python = scale.ensure_scarches_venv()
    worker = [str(python), str(HERE / "scale_scarches_worker.py"), str(path)]
    options = ["--epochs", str(epochs), "--batch-size", str(BATCH), "--threads", "2"]
    options += ["--early-stopping"] if early_stopping else []
    done = subprocess.run(
        [*worker, *options, *ARCHITECTURE, "--max-batches", "100000"],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n_train = result["cells_timed_per_epoch"]
    epoch_s = n_train / result["cells_per_s"]
    return {
        "epoch_s": epoch_s,
        "step_ms": 1e3 * epoch_s / math.ceil(n_train / BATCH),
        "epochs_run": result["epochs_run"],
        "train_s": result["train_seconds"],
    }


def main() -> None:
    options = parser(__doc__, out=RESULTS / "kang_vs_scarches", kang=True)
    options.add_argument("--groups", nargs="*", help="cell types (default: all 7)")
    options.add_argument("--scarches-epochs", type=int, default=2)
    options.add_argument(
        "--early-stopping-fold",
        default="CD4T",
        help="the fold on which scArches also trains as it does by default (400 epochs, early "
        "stopping), timed whole; '' to skip",
    )
    args = options.parse_args()
    quiet()
    import os

    import anndata as ad
    import pandas as pd

    start = time.perf_counter()
    from sctrvae.tl._held_out import GroupedData

    adata = ad.read_h5ad(args.data)
    condition, group_key, source, target = KANG_FOLDS
    data = GroupedData(adata, group_key, condition, source, target, n_degs=100)
    groups = args.groups or list(adata.obs[group_key].cat.categories)
    reference = [reference_step_ms(adata.n_vars)]
    rows = []
    for group in groups:
        load = os.getloadavg()[0]
        ours = sctrvae_fold(data, group)
        theirs = scarches_fold(adata, group, args.scarches_epochs)
        reference.append(reference_step_ms(adata.n_vars))
        rows.append(
            {
                "held_out": group,
                "sctrvae_fold_s": round(ours["fold_s"], 1),
                "sctrvae_steps": ours["steps"],
                "sctrvae_step_ms": round(ours["step_ms"], 1),
                "sctrvae_fit_per_step_ms": round(ours["fit_per_step_ms"], 1),
                "sctrvae_pearson_delta_deg": round(ours["pearson_delta_deg"], 3),
                "scarches_epoch_s": round(theirs["epoch_s"], 2),
                "scarches_step_ms": round(theirs["step_ms"], 1),
                "reference_step_ms": round(reference[-1], 1),
                "load_before": load,
            }
        )
        print(rows[-1], flush=True)
    stopped = None

    def fold_of(group: str) -> float:
        return float(df.set_index("held_out").sctrvae_fold_s[group])

    if args.early_stopping_fold:
        stopped = scarches_fold(adata, args.early_stopping_fold, SCARCHES_EPOCHS, True)
        reference.append(reference_step_ms(adata.n_vars))
    df = pd.DataFrame(rows)
    df["step_vs_reference"] = (df.sctrvae_step_ms / df.reference_step_ms).round(2)
    df["step_vs_scarches"] = (df.sctrvae_step_ms / df.scarches_step_ms).round(2)
    default_fold = SCARCHES_EPOCHS * df.scarches_epoch_s
    shortest_fold = (SCARCHES_PATIENCE + 1) * df.scarches_epoch_s
    df["fold_vs_scarches_default"] = (df.sctrvae_fold_s / default_fold).round(3)
    df["fold_vs_scarches_shortest"] = (df.sctrvae_fold_s / shortest_fold).round(3)
    df.to_csv(args.out.with_suffix(".csv"), index=False)
    median = df.median(numeric_only=True)
    lines = report_header(
        "Speed as ratios: Kang folds against scArches' TRVAE and a matmul reference",
        "python benchmarks/kang_vs_scarches.py",
        "its docstring says what runs",
        time.perf_counter() - start,
    )
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in r] for r in df.to_numpy()]
    table = ["| " + " | ".join(r) + " |" for r in cells]
    table.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    lines += [
        *table,
        "",
        f"Medians over the {len(df)} folds: a sctrvae step is {median.step_vs_reference:.2f}× "
        f"the reference step (goal ≤ 1.5) and {median.step_vs_scarches:.2f}× a scArches step; "
        f"a sctrvae fold (fit + calibrated prediction, {median.sctrvae_fold_s:.1f} s) is "
        f"{median.fold_vs_scarches_default:.3f}× scArches' default 400-epoch training of the "
        f"same cells and {median.fold_vs_scarches_shortest:.3f}× the shortest run its early "
        "stopping allows (21 epochs) (goal ≤ 0.5).",
        "",
        *(
            [
                f"scArches trained as it does by default on the {args.early_stopping_fold} fold "
                f"(400 epochs, validation, early stopping) ran {stopped['epochs_run']} epochs in "
                f"{stopped['train_s']:.1f} s: the sctrvae fold took "
                f"{fold_of(args.early_stopping_fold) / stopped['train_s']:.3f}× that.",
                "",
            ]
            if stopped
            else []
        ),
        f"Accuracy of the sctrvae folds (calibrated readout, Δ-Pearson over the held-out type's "
        f"top-100 DEGs, seed 0, no labels): mean {df.sctrvae_pearson_delta_deg.mean():.3f} "
        "(scArches' TRVAE has no prediction API: its accuracy on these folds is not measured "
        "here).",
        "",
        "`sctrvae_step_ms`: the median training step (batch start to batch end, a Lightning "
        "callback); `sctrvae_fit_per_step_ms`: `train()`'s wall time per step, validation and "
        "start-up included; `scarches_step_ms`: scArches' training loop per step (data loading "
        "included, validation not).",
        "",
        "Reference step at the start and after each fold (ms): "
        + ", ".join(f"{r:.1f}" for r in reference)
        + "; load average before each fold: "
        + ", ".join(f"{v:.1f}" for v in df.load_before)
        + " (2 cores, 2 torch threads each; nothing else ran).",
        "",
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
