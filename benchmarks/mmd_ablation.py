"""What the MMD does: trVAE variants vs their CVAE ablations vs mean shift, group by group.

    python benchmarks/mmd_ablation.py            # writes benchmarks/results/mmd_ablation.{csv,md}
    python benchmarks/mmd_ablation.py --designs kang --folds NK --seeds 0 1 2
    python benchmarks/mmd_ablation.py --designs c --sweep   # MMD weights 0 ... 10,000

Designs (simulated with :func:`sctrvae.datasets.simulate`, so the true response is known):

- ``a``: group-specific response (each cell type responds with its own strength and genes);
- ``b``: the same, with conditions that differ in composition (cell-type proportions);
- ``c``: strongly different groups with few genes ("patients": 5 groups, 300 genes, baseline
  deviations three times larger);
- ``kang``: Kang 2018 (``$SCTRVAE_KANG_PATH``), scored against the real held-out cells only;
- ``kang_normal``: the paper's setting, Kang's 2,000 most variable genes, log-normalised, with
  ``likelihood="normal"`` (mean readout; the others need counts).

Variants: ``trvae`` (the default: global MMD, decoder condition offset), ``cvae`` (the same with
``mmd_weight=0``), ``paper`` and ``paper_cvae`` (the paper's decoder, without the offset, with and
without the MMD), ``label`` and ``reweighted`` (the label-aware MMDs, ``labels_key="cell_type"``),
``label_batches`` (the default's global MMD with ``labels_key``: batches stratified by (label,
condition) as the label-aware variants have them) and the ``mean_shift`` reference. ``--sweep``
runs the default at MMD weights 0, 10, 100, 1,000 and 10,000 instead. Every (design, fold, seed)
is appended to the CSV as soon as it is done; a rerun skips those already there, and the report is
rewritten from the CSV.
"""

from __future__ import annotations

import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from _common import KANG_FOLDS, RESULTS, parser, quiet, report_header

import sctrvae
from sctrvae.metrics import log_normalized
from sctrvae.tl._held_out import GroupedData

VARIANTS = {
    "trvae": {},
    "cvae": {"mmd_weight": 0.0},
    "paper": {"condition_offset": False},
    "paper_cvae": {"condition_offset": False, "mmd_weight": 0.0},
    "label": {"labels_key": "cell_type", "mmd_mode": "label"},
    "reweighted": {"labels_key": "cell_type", "mmd_mode": "reweighted"},
    # the default's global MMD on the batches the label-aware variants train on, stratified by
    # (label, condition): separates what the sampler does from what the MMD variant does
    "label_batches": {"labels_key": "cell_type", "mmd_mode": "global"},
}
#: Variants per design: the label-aware ones and the paper's decoder only where they are asked
#: about (composition, and everywhere for the paper's decoder); Kang's budget goes to seeds.
DESIGN_VARIANTS = {
    "a": list(VARIANTS),
    "b": list(VARIANTS),
    "c": list(VARIANTS),
    "kang": ["trvae", "cvae", "paper", "label", "reweighted", "label_batches"],
    "kang_normal": ["paper", "paper_cvae", "trvae", "cvae"],
}
SWEEP_WEIGHTS = (0.0, 10.0, 100.0, 1000.0, 10000.0)
METHODS = [*VARIANTS, "mean_shift"] + [f"mmd_weight={w:g}" for w in SWEEP_WEIGHTS]
N_HVG = 2000
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
FOLDS = {
    "a": ["type_0", "type_1"],
    "b": ["type_0", "type_2"],
    "c": ["type_0", "type_1"],
    "kang_normal": ["CD4T", "NK", "CD14+Mono"],
}


SETTINGS = (
    "Settings: default model and `train()` (MMD weight 100, early stopping, a budget of "
    "2,000 optimiser steps), `n_samples=5` draws per cell for the sampled and calibrated "
    "readouts; simulated designs of 1,200 cells."
)
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
    if design in ("kang", "kang_normal"):
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


def paper_setting(adata: ad.AnnData) -> ad.AnnData:
    """Kang as the paper trained on it: the ``N_HVG`` most variable genes, log-normalised."""
    import scanpy as sc

    lognorm = ad.AnnData(log_normalized(adata), obs=adata.obs[["condition", "cell_type"]].copy())
    lognorm.var_names = adata.var_names
    sc.pp.highly_variable_genes(lognorm, n_top_genes=N_HVG)
    return lognorm[:, lognorm.var["highly_variable"]].copy()


def normal_rows(data: GroupedData, lognorm: ad.AnnData, group: str, variants: dict, seed: int):
    """One Kang fold in the paper's setting (``lognorm``), ``likelihood="normal"``.

    ``data``: the held-out engine over the counts of ``lognorm``'s genes, its changes taken from
    ``lognorm`` itself.
    """
    ((keep, (held,)),) = data.folds([(group,)])
    deg_mask = held.deg_mask
    real, source = lognorm.X[held.target_cells], lognorm.X[held.source_cells]
    rows = []
    for method, overrides in variants.items():
        scvi.settings.seed = seed
        train = lognorm[keep].copy()
        sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
        model = sctrvae.TRVAEModel(train, likelihood="normal", **overrides)
        start = time.perf_counter()
        model.train(enable_progress_bar=False)
        seconds = time.perf_counter() - start
        pred = model.predict(lognorm[held.source_cells].copy(), target_condition="stimulated")
        y = model.get_latent_representation(representation="y")
        mixing = sctrvae.metrics.condition_mixing(
            y, train.obs["condition"].to_numpy(), train.obs["cell_type"].to_numpy()
        )
        scores = sctrvae.metrics.score_log_expression(
            pred.layers["log_normalized"], real, source, deg_mask
        )
        rows.append(
            {
                "group": group,
                "method": method,
                "readout": "mean",
                **scores,
                "mixing_y": mixing,
                "train_seconds": seconds,
                "epochs": len(model.history["elbo_train"]),
            }
        )
    shifted = np.clip(source + data.shared([group])["mean_shift"], 0.0, None)
    scores = sctrvae.metrics.score_log_expression(shifted, real, source, deg_mask)
    rows.append({"group": group, "method": "mean_shift", "readout": "cells", **scores})
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per design and method: mean and spread (sd over seeds, averaged over folds) of scores."""
    # the calibrated readout where there is one (count likelihoods), else the mean
    readout = np.where(df.design == "kang_normal", "mean", "calibrated")
    rows = df[((df.readout == readout) | (df.readout == "cells")) & df.method.isin(METHODS)]
    scores = [
        c
        for c in ("pearson_delta_true", "pearson_delta_deg", "r2_mean_deg", "mixing_y", "mixing_z")
        if c in rows
    ]
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
    out = out.reset_index()
    # designs in the order the docstring gives them, methods in the order of METHODS
    order = [[*DESIGNS, "kang", "kang_normal"], METHODS]
    keys = [
        out[c].map({v: i for i, v in enumerate(o)})
        for c, o in zip(["design", "method"], order, strict=True)
    ]
    return out.iloc[np.lexsort(keys[::-1])].reset_index(drop=True)


def write_report(df: pd.DataFrame, path: Path) -> None:
    table = summary(df)
    folds = df.groupby("design", sort=False).group.unique()
    lines = [
        *report_header(
            "MMD ablation",
            "python benchmarks/mmd_ablation.py",
            see="its docstring describes the designs and variants",
        ),
        SETTINGS,
        "",
        'Scores of the calibrated readout (`predict(readout="calibrated")`; `kang_normal`: the',
        "mean readout); references use the real cells. `pearson_delta_true`: Pearson r of the",
        "predicted change (mean log-normalised expression, prediction − source) with the true one",
        "(the same change between the type's stimulated and control cells in a draw of 4,000",
        "cells per type and condition from the same simulation) over the response genes.",
        "`pearson_delta_deg`: the same against the real held-out cells over their top-100 DEGs;",
        "`r2_mean_deg`: R² of their mean expression. `mixing_y` / `mixing_z`: condition mixing",
        "of the training cells within each cell type",
        "in `y` (`sctrvae.metrics.condition_mixing`, kNN balanced accuracy: 0.5 = conditions",
        "indistinguishable, 1 = separated). Mean over folds of the mean over seeds ± the standard",
        "deviation over seeds (averaged over folds); `n_runs` = folds × seeds.",
        "",
        table.to_markdown(index=False),
        "",
        "Folds: " + "; ".join(f"{d}: {', '.join(sorted(g))}" for d, g in folds.items()) + ".",
        "",
    ]
    per_method = df.groupby(["design", "method"], sort=False).group.unique()
    fewer = [
        f"{method} on {design}: {', '.join(sorted(g))}"
        for (design, method), g in per_method.items()
        if len(g) < len(folds[design])
    ]
    if fewer:
        lines += ["Fewer folds: " + "; ".join(fewer) + ".", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS, seeds=[0, 1, 2], kang=True)
    options.add_argument("--designs", nargs="*", default=["a", "b", "c", "kang", "kang_normal"])
    options.add_argument("--folds", nargs="*", help="groups to hold out (default: per design)")
    options.add_argument("--variants", nargs="*", help="default: per design")
    options.add_argument("--sweep", action="store_true", help="the default at several weights")
    args = options.parse_args()
    quiet()

    csv = args.out / "mmd_ablation.csv"
    args.out.mkdir(parents=True, exist_ok=True)
    done = (
        pd.read_csv(csv)
        if csv.exists()
        else pd.DataFrame(columns=["design", "group", "seed", "method"])
    )
    for design in args.designs:
        adata, truth = load(design, args.data)
        if design == "kang_normal":
            lognorm = paper_setting(adata)
            data = GroupedData(
                adata[:, lognorm.var_names],
                "cell_type",
                "condition",
                "control",
                "stimulated",
                n_degs=100,
                lognorm=lognorm.X,
            )
        if args.sweep:
            variants = {f"mmd_weight={w:g}": {"mmd_weight": w} for w in SWEEP_WEIGHTS}
        else:
            names = args.variants or DESIGN_VARIANTS[design]
            variants = {name: VARIANTS[name] for name in names}
        folds = args.folds or FOLDS.get(design) or list(adata.obs["cell_type"].cat.categories)
        for group in folds:
            for seed in args.seeds:
                key = (done.design == design) & (done.group == group) & (done.seed == seed)
                todo = {m: v for m, v in variants.items() if not (key & (done.method == m)).any()}
                if not todo:
                    continue
                start = time.perf_counter()
                if design == "kang_normal":
                    rows = normal_rows(data, lognorm, group, todo, seed)
                else:
                    rows = sctrvae.benchmark.leave_one_out(
                        adata,
                        *KANG_FOLDS,
                        groups=[group],
                        methods=todo,
                        references=("mean_shift",),
                        truth=truth,
                        n_samples=5,
                        seed=seed,
                    )
                if (key & (done.method == "mean_shift")).any():
                    rows = rows[rows.method != "mean_shift"]
                rows.insert(0, "design", design)
                rows.insert(2, "seed", seed)
                done = pd.concat([done, rows], ignore_index=True)
                done.to_csv(csv, index=False)
                write_report(done, args.out / "mmd_ablation.md")
                print(
                    f"{design} {group} seed {seed}: {time.perf_counter() - start:.0f} s", flush=True
                )


if __name__ == "__main__":
    main()
