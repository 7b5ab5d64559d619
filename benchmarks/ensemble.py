"""Seed ensembles on the Kang folds: k = 1, 3, 5 models, repeated, mean and fold-level spread.

    python benchmarks/ensemble.py               # writes benchmarks/results/ensemble.{csv,md}
    python benchmarks/ensemble.py --folds NK CD4T

For each held-out cell type (leave one cell type's stimulated cells out, as in
``benchmark.leave_one_out``), nine default models are trained with seeds 0-8. Each model alone is
a repetition of k = 1 (nine); repetition ``r`` (0, 1, 2) of k = 3 takes models ``3r .. 3r+2``, of
k = 5 models ``3r .. 3r+4`` modulo 9. :meth:`sctrvae.TRVAEEnsemble.from_models` predicts the
held-out cells with the calibrated readout (10 draws per member), scored over the fold's top-100
DEGs.
Repetitions of k = 1 and k = 3 share no model, so their spread is what a user re-running the
analysis would see; those of k = 5 share 2 of 5 members with the next (nine fits per fold instead
of fifteen), which understates their spread somewhat. Cost of an ensemble = its members' training
seconds plus its prediction seconds. Every fold is appended to the CSV when done; a rerun skips
those already there.

Data: ``$SCTRVAE_KANG_PATH`` or ``../shared/data/kang_pbmc_ifnb_1975.h5ad`` beside the repository.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from _common import RESULTS, parser, quiet

import sctrvae
from sctrvae.metrics import log_normalized, score_log_expression
from sctrvae.tl._held_out import GroupedData

SIZES = (1, 3, 5)
N_MODELS = 9
REPEATS = 3


def fold_rows(data: GroupedData, group: str) -> list[dict]:
    """Scores and costs of the k-model ensembles of one fold, every repetition."""
    ((keep, (held,)),) = data.folds([(group,)])
    source = data.adata[held.source_cells].copy()
    real_lognorm = log_normalized(data.adata[held.target_cells])
    source_lognorm, deg_mask = log_normalized(source), held.deg_mask
    train = data.adata[keep].copy()
    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    models, seconds = [], []
    for i in range(N_MODELS):
        scvi.settings.seed = i
        model = sctrvae.TRVAEModel(train)
        start = time.perf_counter()
        model.train(enable_progress_bar=False)
        seconds.append(time.perf_counter() - start)
        models.append(model)
    rows = []
    ensembles = [(i, 1, [i]) for i in range(N_MODELS)] + [
        (r, k, [(3 * r + i) % N_MODELS for i in range(k)])
        for k in SIZES[1:]
        for r in range(REPEATS)
    ]
    for repeat, k, members in ensembles:
        ensemble = sctrvae.TRVAEEnsemble.from_models([models[i] for i in members])
        start = time.perf_counter()
        pred = ensemble.predict(source, target_condition="stimulated", readout="calibrated")
        predict_seconds = time.perf_counter() - start
        scores = score_log_expression(
            pred.layers["log_normalized"], real_lognorm, source_lognorm, deg_mask
        )
        rows.append(
            {
                "group": group,
                "repeat": repeat,
                "k": k,
                **scores,
                "train_seconds": sum(seconds[i] for i in members),
                "predict_seconds": predict_seconds,
            }
        )
    return rows


def write_report(df: pd.DataFrame, path: Path) -> None:
    df = df.astype({"k": int, "repeat": int})
    per_fold = df.groupby(["k", "group"])
    table = pd.DataFrame(
        {
            "mean Δ-Pearson DEG": per_fold.pearson_delta_deg.mean().groupby("k").mean(),
            "fold-level sd over repeats": per_fold.pearson_delta_deg.std().groupby("k").mean(),
            "largest fold range": (
                per_fold.pearson_delta_deg.max() - per_fold.pearson_delta_deg.min()
            )
            .groupby("k")
            .max(),
            "mean R² DEG means": per_fold.r2_mean_deg.mean().groupby("k").mean(),
            "median train s": df.groupby("k").train_seconds.median(),
            "median predict s": df.groupby("k").predict_seconds.median(),
        }
    )
    per_fold_table = df.pivot_table(
        index="group", columns="k", values="pearson_delta_deg", aggfunc=["mean", "std"]
    )
    per_fold_table.columns = [f"k={k} {stat}" for stat, k in per_fold_table.columns]
    lines = [
        "# Seed ensembles on Kang",
        "",
        "Regenerate: `python benchmarks/ensemble.py` (method in its docstring).",
        "",
        f"Folds: {df.group.nunique()}; repetitions per fold "
        "(k = 1: each of the 9 models; k = 3: disjoint triples; k = 5: 2 of 5 members shared "
        "with the next repetition); "
        "calibrated readout, 10 draws per member. Seconds as measured in this run "
        "(`benchmarks/README.md`, Seed ensembles, says under which load).",
        "",
        table.round(4).to_markdown(),
        "",
        "Per fold, Δ-Pearson over DEGs, mean and sd over repetitions:",
        "",
        per_fold_table.round(4).to_markdown(),
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS, kang=True)
    options.add_argument("--folds", nargs="*", help="cell types to hold out (default: all 7)")
    args = options.parse_args()
    quiet()

    adata = ad.read_h5ad(args.data)
    folds = args.folds or list(adata.obs["cell_type"].cat.categories)
    data = GroupedData(adata, "cell_type", "condition", "control", "stimulated", n_degs=100)
    csv = args.out / "ensemble.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["group"])
    for group in folds:
        if (done.group == group).any():
            continue
        start = time.perf_counter()
        done = pd.concat([done, pd.DataFrame(fold_rows(data, group))])
        done.to_csv(csv, index=False)
        write_report(done, args.out / "ensemble.md")
        print(f"{group}: {time.perf_counter() - start:.0f} s", flush=True)
    print(np.round(pd.read_csv(csv).groupby("k").pearson_delta_deg.agg(["mean", "std"]), 4))


if __name__ == "__main__":
    main()
