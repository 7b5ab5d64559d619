"""What the MMD does: trVAE's MMD variants vs the CVAE vs mean shift, held-out group by group.

    python benchmarks/mmd_ablation.py            # writes benchmarks/results/mmd_ablation.{csv,md}
    python benchmarks/mmd_ablation.py --designs kang --folds NK --seeds 0 1 2

Designs (simulated with :func:`sctrvae.datasets.simulate`, so the true response is known):

- ``a``: group-specific response (each cell type responds with its own strength and genes);
- ``b``: the same, with conditions that differ in composition (cell-type proportions);
- ``c``: strongly different groups with few genes ("patients": 5 groups, 300 genes, baseline
  deviations three times larger);
- ``kang``: Kang 2018 (``$SCTRVAE_KANG_PATH``), scored against the real held-out cells only.

Variants: ``global`` (trVAE, MMD between conditions), ``label`` (MMD within each cell type present
in both conditions, ``labels_key="cell_type"``), ``reweighted`` (MMD at equal cell-type
proportions), ``cvae`` (``mmd_weight=0``), and the ``mean_shift`` / ``identity`` references.
Every (design, fold, seed) is appended to the CSV as soon as it is done; a rerun skips those
already there, and the report is rewritten from the CSV.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

import sctrvae
from sctrvae.metrics import log_normalized

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_ifnb_1975.h5ad"
OUT = ROOT / "benchmarks" / "results"
VARIANTS = {
    "global": {"mmd_mode": "global"},
    "label": {"labels_key": "cell_type", "mmd_mode": "label"},
    "reweighted": {"labels_key": "cell_type", "mmd_mode": "reweighted"},
}
METHODS = ["global", "label", "reweighted", "cvae", "mean_shift"]
DESIGNS = {
    "a": {"n_cells": 1200, "n_genes": 250, "seed": 11},
    "b": {
        "n_cells": 1200,
        "n_genes": 250,
        "seed": 12,
        "cell_type_proportions": [[0.25, 0.25, 0.25, 0.25], [0.55, 0.25, 0.1, 0.1]],
    },
    "c": {"n_cells": 1200, "n_genes": 300, "n_cell_types": 5, "group_effect": 3.0, "seed": 13},
}
FOLDS = {"a": ["type_0", "type_1"], "b": ["type_0", "type_2"], "c": ["type_0", "type_1"]}


#: Cells per cell type and condition of the large draw that gives each design's true change.
TRUTH_CELLS_PER_PAIR = 4000


def load(design: str, data: Path) -> tuple[ad.AnnData, dict[str, np.ndarray] | None]:
    """The design's AnnData and, for simulations, each cell type's true change.

    The truth is the quantity a prediction is scored on: the change of the mean log-normalised
    expression between the type's stimulated and control cells, over the response genes (NaN
    elsewhere), measured on a large draw of the same simulation (same seed, hence the same
    profiles and responses). The simulator's log-fold change of the expected proportions is not
    that quantity: a gene a type barely expresses has a large true log-fold change and no
    visible change in its counts.
    """
    if design == "kang":
        return ad.read_h5ad(data), None
    adata = sctrvae.datasets.simulate(**DESIGNS[design])
    n_pairs = adata.obs["cell_type"].cat.categories.size * 2
    large = sctrvae.datasets.simulate(
        **{**DESIGNS[design], "n_cells": TRUTH_CELLS_PER_PAIR * n_pairs}
    )
    lognorm = log_normalized(large)
    cond, types = large.obs["condition"].to_numpy(), large.obs["cell_type"].to_numpy()
    responding = adata.uns["simulation"]["response_genes"][1]
    truth = {}
    for t in adata.obs["cell_type"].cat.categories:
        change = lognorm[(types == t) & (cond == "stimulated")].mean(0) - lognorm[
            (types == t) & (cond == "control")
        ].mean(0)
        truth[t] = np.where(responding, change, np.nan)
    return adata, truth


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per design and method: mean and spread (sd over seeds, averaged over folds) of scores."""
    rows = df[df.readout.isin(["mean", "cells"]) & df.method.isin(METHODS)]
    scores = [c for c in ("pearson_delta_true", "pearson_delta_deg", "mixing_y") if c in rows]
    per_fold = rows.groupby(["design", "method", "group"], sort=False)[scores]
    table = per_fold.mean().groupby(["design", "method"], sort=False).mean()
    spread = per_fold.std().groupby(["design", "method"], sort=False).mean()
    out = pd.DataFrame(index=table.index)
    for c in scores:
        out[c] = [
            "" if np.isnan(m) else f"{m:.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}")
            for m, s in zip(table[c], spread[c], strict=True)
        ]
    out["n_runs"] = rows.groupby(["design", "method"], sort=False).size()
    return out.reset_index()


def write_report(df: pd.DataFrame, path: Path, settings: str) -> None:
    table = summary(df)
    folds = df.groupby("design", sort=False).group.unique()
    lines = [
        "# MMD ablation",
        "",
        "Regenerate: `python benchmarks/mmd_ablation.py` (see its docstring for the designs).",
        "",
        settings,
        "",
        "Scores of the deterministic prediction (`predict()`, readout `mean`); references use the",
        "real cells. `pearson_delta_true`: Pearson r of the predicted change (mean log-normalised",
        "expression, prediction − source) with the simulator's true log-fold change over the",
        "response genes. `pearson_delta_deg`: the same against the real held-out cells over their",
        "top-100 DEGs. `mixing_y`: condition mixing of the training cells within each cell type",
        "in `y` (`sctrvae.metrics.condition_mixing`, kNN balanced accuracy: 0.5 = conditions",
        "indistinguishable, 1 = separated). Mean over folds of the mean over seeds ± the standard",
        "deviation over seeds (averaged over folds); `n_runs` = folds × seeds.",
        "",
        table.to_markdown(index=False),
        "",
        "Folds: " + "; ".join(f"{d}: {', '.join(sorted(g))}" for d, g in folds.items()) + ".",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--designs", nargs="*", default=["a", "b", "c"])
    parser.add_argument("--folds", nargs="*", help="groups to hold out (default: per design)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--data", default=os.environ.get("SCTRVAE_KANG_PATH", DEFAULT_DATA))
    parser.add_argument("--out", default=OUT, type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("scvi").setLevel(logging.ERROR)

    csv = args.out / "mmd_ablation.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["design", "group", "seed"])
    settings = (
        "Settings: default model (`mmd_weight=100`), `train(max_epochs=...)` with early stopping "
        "(the cap per run is the CSV's `max_epochs` column), `n_samples=2` for the sampled "
        "readouts (in the CSV only); simulated designs of 1,200 cells."
    )
    for design in args.designs:
        adata, truth = load(design, Path(args.data))
        folds = args.folds or FOLDS.get(design) or list(adata.obs["cell_type"].cat.categories)
        for group in folds:
            for seed in args.seeds:
                key = (done.design == design) & (done.group == group) & (done.seed == seed)
                if key.any():
                    continue
                start = time.perf_counter()
                rows = sctrvae.benchmark.leave_one_out(
                    adata,
                    "condition",
                    "cell_type",
                    "control",
                    "stimulated",
                    groups=[group],
                    methods=VARIANTS,
                    references=("identity", "mean_shift", "cvae"),
                    train_kwargs={"max_epochs": args.max_epochs},
                    truth=truth,
                    n_samples=2,
                    seed=seed,
                )
                rows.insert(0, "design", design)
                rows.insert(2, "seed", seed)
                rows["max_epochs"] = args.max_epochs
                done = pd.concat([done, rows], ignore_index=True)
                done.to_csv(csv, index=False)
                write_report(done, args.out / "mmd_ablation.md", settings)
                print(
                    f"{design} {group} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True
                )


if __name__ == "__main__":
    main()
