"""Differential response on Kang 2018: does proba_de find a held-out cell type's real DEGs?

    SCTRVAE_KANG_PATH=/path/to/kang.h5ad python benchmarks/differential_response.py
    # writes benchmarks/results/differential_response.{csv,md}

For each cell type: train the default model (default ``train()``) on all cells except that type's
stimulated ones, run :meth:`~sctrvae.TRVAEModel.differential_response` (control -> stimulated),
and rank the genes three ways: by the held-out type's ``proba_de`` (ties, frequent at 1.0,
broken by ``|lfc_mean|``), by its ``|lfc_mean|`` alone, and, as the baseline that needs no model,
by the absolute mean over the other cell types of their measured ``observed_lfc`` (and, for
reference, by that mean signed). Truth: the held-out type's top-100 DEGs from its real cells
(:func:`sctrvae.metrics.top_degs`, Wilcoxon, stimulated vs control: up-regulated genes). Scores:
AUPRC and precision at 100. ``differential_response`` runs with its defaults (``delta=0.25``,
half a count at the median library size as pseudocount).
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import scvi
import torch
from sklearn.metrics import average_precision_score

import sctrvae

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "python benchmarks/differential_response.py"
N_DEGS = 100
BASELINE = "abs(mean observed LFC of the other types)"


def ranking_scores(order: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUPRC and precision at ``N_DEGS`` of the genes ranked by ``order`` (best first)."""
    score = np.empty(order.size)
    score[order] = np.arange(order.size, 0, -1)
    return {
        "auprc": float(average_precision_score(truth, score)),
        "precision_at_100": float(truth[order[:N_DEGS]].mean()),
    }


def fold(adata, group: str, seed: int = 0) -> tuple[list[dict], float, int]:
    """Train without ``group``'s stimulated cells and score the three rankings for ``group``."""
    is_group = (adata.obs["cell_type"] == group).to_numpy()
    is_stim = (adata.obs["condition"] == "stimulated").to_numpy()
    degs = sctrvae.metrics.top_degs(
        adata[is_group & is_stim], adata[is_group & ~is_stim], n_genes=N_DEGS
    )
    truth = adata.var_names.isin(degs)
    train = adata[~(is_group & is_stim)].copy()
    scvi.settings.seed = seed
    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    model = sctrvae.TRVAEModel(train)
    start = time.perf_counter()
    model.train(enable_progress_bar=False)
    seconds = time.perf_counter() - start
    table = model.differential_response(train, "cell_type", "control", "stimulated")
    held_out = table[table.group == group].set_index("gene").loc[adata.var_names]
    others = table[table.group != group].groupby("gene", observed=True)["observed_lfc"].mean()
    rankings = {
        "proba_de": np.lexsort((-held_out.lfc_mean.abs(), -held_out.proba_de)),
        "abs(lfc_mean)": np.argsort(-held_out.lfc_mean.abs().to_numpy(), kind="stable"),
        BASELINE: np.argsort(-others.loc[adata.var_names].abs().to_numpy(), kind="stable"),
        # the truth holds up-regulated genes only, which a signed ranking favours
        "mean observed LFC of the other types, signed": np.argsort(
            -others.loc[adata.var_names].to_numpy(), kind="stable"
        ),
    }
    rows = [
        {"group": group, "ranking": name, **ranking_scores(order, truth)}
        for name, order in rankings.items()
    ]
    return rows, seconds, len(model.history["elbo_train"])


def write_report(df: pd.DataFrame, out: Path, n_groups: int, wall: float) -> None:
    df.to_csv(out / "differential_response.csv", index=False)
    wide = df.pivot(index="group", columns="ranking", values=["auprc", "precision_at_100"])
    wide = wide.reindex(index=pd.unique(df.group), columns=pd.unique(df.ranking), level=1)
    wide.columns = [f"{score}: {ranking}" for score, ranking in wide.columns]
    summary = df.groupby("ranking", sort=False)[["auprc", "precision_at_100"]].mean()
    proba = df[df.ranking == "proba_de"].set_index("group")
    baseline = df[df.ranking == BASELINE].set_index("group")
    wins = int((proba.auprc > baseline.auprc).sum())
    lines = [
        "# Differential response: recovering a held-out cell type's DEGs (Kang 2018)",
        "",
        f"Regenerate: `SCTRVAE_KANG_PATH=... {COMMAND}` (see `benchmarks/README.md`).",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), "
        f"torch {torch.__version__}, sctrvae {sctrvae.__version__}; total wall time "
        f"{wall / 60:.1f} min.",
        "",
        f"Folds done: {df.group.nunique()} of {n_groups} ({', '.join(pd.unique(df.group))}).",
        "",
        f"Truth: the held-out type's top-{N_DEGS} Wilcoxon DEGs (stimulated vs control, real "
        f"cells); chance AUPRC is about {N_DEGS} / number of genes.",
        "",
        "## Means over folds",
        "",
        summary.round(3).to_markdown(),
        "",
        f"proba_de above the baseline ({BASELINE}, AUPRC) in {wins} of {len(proba)} folds.",
        "",
        "## Per fold",
        "",
        wide.T.round(3).to_markdown(),
        "",
    ]
    (out / "differential_response.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", default=None, help="Kang .h5ad (default: $SCTRVAE_KANG_PATH)")
    parser.add_argument("--out", default=ROOT / "benchmarks" / "results", type=Path)
    parser.add_argument("--groups", nargs="*", help="cell types to hold out (default: all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    adata = sctrvae.datasets.kang2018(path=args.data)
    groups = args.groups or list(adata.obs["cell_type"].astype("category").cat.categories)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for group in groups:  # the report is rewritten after each fold
        fold_rows, seconds, epochs = fold(adata, group)
        rows += [{**row, "train_seconds": seconds, "epochs": epochs} for row in fold_rows]
        df = pd.DataFrame(rows)
        write_report(df, args.out, len(groups), time.perf_counter() - start)
        print(f"{group}: {epochs} epochs, {seconds:.0f} s", flush=True)
    print(df.groupby("ranking", sort=False)[["auprc", "precision_at_100"]].mean().round(3))


if __name__ == "__main__":
    main()
