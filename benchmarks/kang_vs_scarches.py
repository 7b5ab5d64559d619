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


def sctrvae_fold(adata, group: str) -> dict:
    import scvi

    import sctrvae

    condition, group_key, source, target = KANG_FOLDS
    obs = adata.obs
    held = ((obs[group_key] == group) & (obs[condition] == target)).to_numpy()
    controls = np.flatnonzero((obs[group_key] == group) & (obs[condition] == source))
    start = time.perf_counter()
    train = adata[~held].copy()
    scvi.settings.seed = 0
    sctrvae.TRVAEModel.setup_anndata(train, condition_key=condition)
    model = sctrvae.TRVAEModel(train)
    fit_start = time.perf_counter()
    model.train(enable_progress_bar=False)
    fit = time.perf_counter() - fit_start
    model.predict(adata, indices=controls, target_condition=target, readout="calibrated")
    steps = model.trainer.global_step
    return {
        "fold_s": time.perf_counter() - start,
        "train_s": fit,
        "steps": steps,
        "step_ms": 1e3 * fit / steps,
    }


def scarches_fold(adata, group: str, epochs: int) -> dict:
    """scArches' epoch on the fold's training cells, in its own environment."""
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
    done = subprocess.run(
        [*worker, *options, *ARCHITECTURE, "--max-batches", "100000"],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    n_train = result["cells_timed_per_epoch"]
    epoch_s = n_train / result["cells_per_s"]
    return {"epoch_s": epoch_s, "step_ms": 1e3 * epoch_s / math.ceil(n_train / BATCH)}


def main() -> None:
    options = parser(__doc__, out=RESULTS / "kang_vs_scarches", kang=True)
    options.add_argument("--groups", nargs="*", help="cell types (default: all 7)")
    options.add_argument("--scarches-epochs", type=int, default=2)
    args = options.parse_args()
    quiet()
    import os

    import anndata as ad
    import pandas as pd

    start = time.perf_counter()
    adata = ad.read_h5ad(args.data)
    groups = args.groups or list(adata.obs[KANG_FOLDS[1]].cat.categories)
    reference = [reference_step_ms(adata.n_vars)]
    rows = []
    for group in groups:
        load = os.getloadavg()[0]
        ours = sctrvae_fold(adata, group)
        theirs = scarches_fold(adata, group, args.scarches_epochs)
        reference.append(reference_step_ms(adata.n_vars))
        rows.append(
            {
                "held_out": group,
                "sctrvae_fold_s": round(ours["fold_s"], 1),
                "sctrvae_steps": ours["steps"],
                "sctrvae_step_ms": round(ours["step_ms"], 1),
                "scarches_epoch_s": round(theirs["epoch_s"], 2),
                "scarches_step_ms": round(theirs["step_ms"], 1),
                "reference_step_ms": round(reference[-1], 1),
                "load_before": load,
            }
        )
        print(rows[-1], flush=True)
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
