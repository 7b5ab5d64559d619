"""Leave-one-cell-type-out benchmark on Kang 2018 (IFN-β), all seven cell types.

    python benchmarks/kang_loo.py            # writes benchmarks/results/kang_loo.{csv,md,png}

Data: ``$SCTRVAE_KANG_PATH`` or ``../shared/data/kang_pbmc_ifnb_1975.h5ad`` beside the repository.
Default model and default ``train()``. Readouts: "mean" (``predict()``), "sampled"
(``predict(n_samples=10)``, NB draws normalised like real cells) and "calibrated" (the same draws
with ``readout="calibrated"``).
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from _common import KANG_FOLDS, RESULTS, PeakRSS, parser, quiet, report_header

import sctrvae

METRICS = [
    "pearson_delta_deg",
    "r2_mean_deg",
    "r2_var_deg",
    "r2_mean_all",
    "r2_var_all",
    "pearson_delta_all",
]
READOUTS = ("mean", "sampled", "calibrated")
TARGETS = {"pearson_delta_deg": 0.935, "r2_mean_deg": 0.93, "r2_var_deg": 0.50, "r2_var_all": 0.72}


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean over folds of each metric, per method and readout."""
    keep = METRICS + [c for c in ("train_seconds", "peak_rss_mb") if c in df]
    return df.groupby(["method", "readout"], sort=False)[keep].mean()


def write_report(df: pd.DataFrame, out: Path, wall: float) -> None:
    summary = summary_table(df)
    trvae = df[df.method == "trvae"].set_index(["group", "readout"])
    cvae = df[df.method == "cvae"].set_index(["group", "readout"])
    shift = df[df.method == "mean_shift"].set_index("group")
    lines = [
        *report_header(
            "Kang 2018 leave-one-cell-type-out benchmark",
            "python benchmarks/kang_loo.py",
            wall=wall,
        ),
        f"## Means over the {df.group.nunique()} folds ({', '.join(df.group.unique())})",
        "",
        summary.round(3).to_markdown(),
        "",
        "Targets (means over folds): " + ", ".join(f"{k} ≥ {v}" for k, v in TARGETS.items()) + ".",
        "",
        "## trVAE vs CVAE (MMD weight 0) vs mean shift, fold by fold: Δ-Pearson over DEGs",
        "",
    ]
    columns = {
        f"{name} ({readout})": table.xs(readout, level="readout")["pearson_delta_deg"]
        for name, table in (("trvae", trvae), ("cvae", cvae))
        for readout in READOUTS
    }
    folds = pd.DataFrame(
        {
            **columns,
            "mean_shift": shift["pearson_delta_deg"],
            "ceiling": df[df.method == "ceiling"].set_index("group")["pearson_delta_deg"],
        }
    )
    above = {
        readout: int((folds[f"trvae ({readout})"] > folds["mean_shift"]).sum())
        for readout in READOUTS
    }
    lines += [
        folds.round(3).to_markdown(),
        "",
        "trVAE above mean shift in "
        + ", ".join(f"{n} of {len(folds)} folds ({r})" for r, n in above.items())
        + ".",
        "",
        "## Cost per fold (trVAE, default train())",
        "",
    ]
    cost = trvae.xs("mean", level="readout")[["train_seconds", "epochs", "peak_rss_mb"]]
    lines += [cost.round(1).to_markdown(), ""]
    (out / "kang_loo.md").write_text("\n".join(lines))


def plot(df: pd.DataFrame, path: Path) -> None:
    rows = df.assign(label=df.method + " (" + df.readout + ")")
    labels = list(dict.fromkeys(rows.label))
    groups = list(dict.fromkeys(rows.group))
    fig, axes = plt.subplots(2, 3, figsize=(16, 8), sharex=True)
    width = 0.8 / len(labels)
    for ax, metric in zip(axes.ravel(), METRICS, strict=True):
        for i, label in enumerate(labels):
            values = rows[rows.label == label].set_index("group").reindex(groups)[metric]
            ax.bar([g + i * width for g in range(len(groups))], values, width, label=label)
        ax.set_title(metric)
        ax.set_xticks([g + 0.4 - width / 2 for g in range(len(groups))])
        ax.set_xticklabels(groups, rotation=45, ha="right")
        ax.set_ylim(0, 1)
    axes[0, 0].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    options = parser(__doc__, out=RESULTS, kang=True)
    options.add_argument("--groups", nargs="*", help="cell types to hold out (default: all)")
    args = options.parse_args()
    quiet()

    adata = ad.read_h5ad(args.data)
    groups = args.groups or list(adata.obs["cell_type"].astype("category").cat.categories)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    folds = []
    for group in groups:  # one fold at a time, the report rewritten after each
        with PeakRSS() as memory:  # the fold's fits, predictions and references
            fold = sctrvae.benchmark.leave_one_out(adata, *KANG_FOLDS, groups=[group])
        folds.append(fold.assign(peak_rss_mb=memory.peak_mb))
        df = pd.concat(folds, ignore_index=True)
        df.to_csv(args.out / "kang_loo.csv", index=False)
        write_report(df, args.out, time.perf_counter() - start)
        plot(df, args.out / "kang_loo.png")
        print(f"{group} done after {time.perf_counter() - start:.0f} s", flush=True)
    print(summary_table(df).round(3).to_string())


if __name__ == "__main__":
    main()
