"""Differential response on Kang 2018: does the table find a held-out cell type's real DEGs?

    SCTRVAE_KANG_PATH=/path/to/kang.h5ad python benchmarks/differential_response.py
    # writes benchmarks/results/differential_response.{csv,md}; --models DIR keeps the fitted
    # models there and reuses them on a rerun

For each cell type: train the default model (default ``train()``) on all cells except that type's
stimulated ones, run :meth:`~sctrvae.TRVAEModel.differential_response` (control -> stimulated)
with its defaults (``delta=0.25``, half a count at the median library size as pseudocount), and
rank the genes of the held-out type. Two truths from its real cells (Wilcoxon, stimulated vs
control): ``up``, the top-100 genes by score (:func:`sctrvae.metrics.top_degs`: up-regulated
genes), and ``both``, the top-100 by absolute score. A signed ranking is compared on ``up``, an
unsigned one on ``both``: ``proba_up`` and ``lfc_mean`` against the other types' mean measured
``observed_lfc`` (signed); ``proba_de`` and ``|lfc_mean|`` against its absolute value. Scores:
AUPRC and precision at 100. Coverage: the share of genes whose true change (``observed_lfc``
of the held-out type's real cells) lies in ``[lfc_lower, lfc_upper]`` at 90% and 95%.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
from _common import RESULTS, default_fit, parser, quiet, report_header
from sklearn.metrics import average_precision_score

import sctrvae
from sctrvae.tl._held_out import GroupedData

N_DEGS = 100
BASELINE = "abs(mean observed LFC of the other types)"
SIGNED_BASELINE = "mean observed LFC of the other types, signed"
COVERAGE_LEVELS = (0.9, 0.95)


def ranking_scores(order: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """AUPRC and precision at ``N_DEGS`` of the genes ranked by ``order`` (best first)."""
    score = np.empty(order.size)
    score[order] = np.arange(order.size, 0, -1)
    return {
        "auprc": float(average_precision_score(truth, score)),
        "precision_at_100": float(truth[order[:N_DEGS]].mean()),
    }


def wilcoxon_truths(adata, group: str) -> dict[str, np.ndarray]:
    """The type's top-``N_DEGS`` Wilcoxon genes: by score (``up``), by |score| (``both``)."""
    cells = adata[(adata.obs["cell_type"] == group).to_numpy()].copy()
    cells.X = sctrvae.metrics.log1p_normalize(cells.X)
    sc.tl.rank_genes_groups(
        cells, "condition", groups=["stimulated"], reference="control", method="wilcoxon"
    )
    ranked = cells.uns["rank_genes_groups"]
    scores = pd.Series(
        np.asarray(ranked["scores"]["stimulated"], dtype=float),
        index=np.asarray(ranked["names"]["stimulated"]).astype(str),
    ).loc[adata.var_names]
    return {
        "up": adata.var_names.isin(scores.nlargest(N_DEGS).index),
        "both": adata.var_names.isin(scores.abs().nlargest(N_DEGS).index),
    }


def fitted_model(train, group: str, seed: int, models: Path | None):
    """The default model trained on ``train`` (read from ``models/group`` when saved there)."""
    saved = None if models is None else models / group
    if saved is not None and (saved / "model.pt").exists():
        return sctrvae.TRVAEModel.load(saved, adata=train), float("nan")
    model, seconds = default_fit(train, seed)
    if saved is not None:
        model.save(saved, overwrite=True)
    return model, seconds


def fold(data: GroupedData, group: str, seed: int = 0, models: Path | None = None):
    """Train without ``group``'s stimulated cells; score rankings and coverage for ``group``."""
    adata = data.adata
    truths = wilcoxon_truths(adata, group)
    train = adata[data.without_targets([group])].copy()
    model, seconds = fitted_model(train, group, seed, models)
    rows = []
    for level in COVERAGE_LEVELS:
        table = model.differential_response(
            train, "cell_type", "control", "stimulated", credible_level=level
        )
        held_out = table[table.group == group].set_index("gene").loc[adata.var_names]
        # the true change, measured as observed_lfc is: on the held-out type's real cells
        real = (
            model.differential_response(
                adata, "cell_type", "control", "stimulated", groups=[group], n_samples=1
            )
            .set_index("gene")
            .loc[adata.var_names, "observed_lfc"]
        )
        inside = (held_out.lfc_lower <= real) & (real <= held_out.lfc_upper)
        rows.append(
            {
                "group": group,
                "ranking": f"coverage of the {level:.0%} interval",
                "all genes": float(inside.mean()),
                "up": float(inside[truths["up"]].mean()),
                "both": float(inside[truths["both"]].mean()),
            }
        )
    others = table[table.group != group].groupby("gene", observed=True)["observed_lfc"].mean()
    others = others.loc[adata.var_names].to_numpy()
    signed = {
        "proba_up": np.lexsort((-held_out.lfc_mean, -held_out.proba_up)),
        "lfc_mean": np.argsort(-held_out.lfc_mean.to_numpy(), kind="stable"),
        SIGNED_BASELINE: np.argsort(-others, kind="stable"),
    }
    unsigned = {
        "proba_de": np.lexsort((-held_out.lfc_mean.abs(), -held_out.proba_de)),
        "abs(lfc_mean)": np.argsort(-held_out.lfc_mean.abs().to_numpy(), kind="stable"),
        BASELINE: np.argsort(-np.abs(others), kind="stable"),
    }
    for truth, rankings in (("up", signed), ("both", unsigned)):
        for name, order in rankings.items():
            scores = ranking_scores(order, truths[truth])
            rows.append({"group": group, "ranking": name, "truth": truth, **scores})
    return rows, seconds


def write_report(df: pd.DataFrame, out: Path, n_groups: int, wall: float) -> None:
    df.to_csv(out / "differential_response.csv", index=False)
    ranked = df[df.truth.notna()]
    summary = ranked.groupby(["truth", "ranking"], sort=False)[["auprc", "precision_at_100"]].mean()
    coverage = df[df.truth.isna()].groupby("ranking", sort=False)[["all genes", "up", "both"]]
    per_fold = ranked.pivot(index="group", columns="ranking", values="auprc")
    per_fold = per_fold.reindex(index=pd.unique(df.group), columns=pd.unique(ranked.ranking))
    wins = {
        name: int((per_fold[name] > per_fold[baseline]).sum())
        for name, baseline in (("proba_up", SIGNED_BASELINE), ("proba_de", BASELINE))
    }
    lines = [
        *report_header(
            "Differential response: recovering a held-out cell type's DEGs (Kang 2018)",
            "SCTRVAE_KANG_PATH=... python benchmarks/differential_response.py",
            wall=wall,
        ),
        f"Folds done: {df.group.nunique()} of {n_groups} ({', '.join(pd.unique(df.group))}).",
        "",
        f"Truths: the held-out type's top-{N_DEGS} Wilcoxon genes, stimulated vs control, real "
        "cells, by score (`up`, for the signed rankings) or by absolute score (`both`, for the "
        f"unsigned ones); chance AUPRC is about {N_DEGS} / number of genes.",
        "",
        "## Rankings, means over folds",
        "",
        summary.round(3).to_markdown(),
        "",
        f"proba_up above the signed baseline in {wins['proba_up']} of {len(per_fold)} folds; "
        f"proba_de above the unsigned one in {wins['proba_de']} of {len(per_fold)}.",
        "",
        "## Coverage of the true change by [lfc_lower, lfc_upper], means over folds",
        "",
        coverage.mean().round(3).to_markdown(),
        "",
        "## AUPRC per fold",
        "",
        per_fold.T.round(3).to_markdown(),
        "",
    ]
    (out / "differential_response.md").write_text("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS, kang=True)
    options.add_argument("--groups", nargs="*", help="cell types to hold out (default: all)")
    options.add_argument("--models", type=Path, help="keep (and reuse) the fitted models here")
    args = options.parse_args()
    quiet()

    adata = sctrvae.datasets.kang2018(path=args.data)
    groups = args.groups or list(adata.obs["cell_type"].astype("category").cat.categories)
    # the held-out engine's split (its scores are not this benchmark's: the test's are)
    data = GroupedData(adata, "cell_type", "condition", "control", "stimulated", n_degs=100)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for group in groups:  # the report is rewritten after each fold
        fold_rows, seconds = fold(data, group, models=args.models)
        rows += [{**row, "train_seconds": seconds} for row in fold_rows]
        df = pd.DataFrame(rows)
        write_report(df, args.out, len(groups), time.perf_counter() - start)
        print(f"{group}: trained in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
