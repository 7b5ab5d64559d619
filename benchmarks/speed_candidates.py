"""Training-budget candidates on Kang at equal accuracy: steps per fit, ms per step, Δ-Pearson.

    python benchmarks/speed_candidates.py --candidates cosine_e30 --folds CD4T B NK --seeds 0
    python benchmarks/speed_candidates.py --candidates cosine_e30 --seeds 0 1 2 --no-labels

Each candidate is a set of ``train()`` arguments; each (candidate, labels, fold, seed) is one
leave-one-cell-type-out fit (:func:`sctrvae.benchmark.leave_one_out`, ``n_samples=5`` as in
``mmd_ablation.py``) scored by the calibrated readout's Pearson r of the predicted change over
the held-out type's top-100 DEGs. ``--labels`` (default) registers ``labels_key="cell_type"``
(the Quickstart: reweighted MMD, batches stratified by cell type); ``--no-labels`` does not.
Rows are appended to ``benchmarks/results/speed_candidates.csv`` as they finish (a rerun skips
those there) with the optimiser steps, the median milliseconds of a training step (Lightning's
batch start to end), the torch threads and the 1-minute load average before the fit; the
report ``speed_candidates.md`` is rewritten from the CSV and compared with today's default
(``mmd_ablation.csv``, variants ``reweighted`` and ``trvae``).

Accuracy and steps do not depend on the machine's load; milliseconds per step do.
"""

from __future__ import annotations

import os
import time
from contextlib import nullcontext
from pathlib import Path

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from _common import KANG_FOLDS, RESULTS, output_bias_from_zero, parser, quiet, report_header

import sctrvae
from sctrvae.train._training_plan import GENE_PARAMETERS

#: Kang's steps per epoch at batch 128 (1,778 training cells of a fold's ≈1.8k)
EPOCH = 14


def _cosine(epochs: float, lr: float = 3e-3, gene_lr_scale: float = 1.0) -> dict:
    """A cosine schedule over ``epochs`` epochs-equivalent of Kang, KL warm-up a quarter."""
    steps = round(epochs * EPOCH)
    return {
        "max_steps": steps,
        "plan_kwargs": {
            "lr": lr,
            "gene_lr_scale": gene_lr_scale,
            "lr_schedule": "cosine",
            "lr_warmup_steps": max(1, steps // 20),
            "n_steps_kl_warmup": steps // 4,
        },
    }


#: name: train() arguments (``package_default``: the defaults of the code that runs). Names:
#: ``eN`` the budget in Kang epochs (14 steps each), ``geneK`` the per-gene vectors (output
#: bias, condition offset, dispersion) at K times the rate, ``headK`` the same with the output
#: layer's weights (the package's ``GENE_PARAMETERS``), ``lrX`` the peak rate (else 3e-3).
CANDIDATES = {
    "package_default": {},
    # the defaults before the output bias started at the genes' average profile
    "previous_default": {"max_steps": 840},
    # the default with a floor of 336 steps (24 Kang epochs) instead of 420
    "default_336_steps": {"max_steps": 336},
    "cosine_e20": _cosine(20),
    "cosine_e30": _cosine(30),
    "cosine_e30_lr1e-2": _cosine(30, lr=1e-2),
    "cosine_e30_gene10": _cosine(30, gene_lr_scale=10.0),
    "cosine_e30_gene30": _cosine(30, gene_lr_scale=30.0),
    "cosine_e45_gene30": _cosine(45, gene_lr_scale=30.0),
    "cosine_e30_gene30_lr6e-3": _cosine(30, lr=6e-3, gene_lr_scale=30.0),
    "cosine_e45_gene30_lr6e-3": _cosine(45, lr=6e-3, gene_lr_scale=30.0),
    "cosine_e30_gene10_lr1e-2": _cosine(30, lr=1e-2, gene_lr_scale=10.0),
    # the previous defaults (constant 3e-3, early stopping, 2,000 steps) with the per-gene rate
    "constant_gene30": {
        "max_steps": 2000,
        "plan_kwargs": {
            "lr": 3e-3,
            "lr_schedule": None,
            "gene_lr_scale": 30.0,
            "n_steps_kl_warmup": 150,
        },
    },
    # the whole output layer (its weight rows are per gene too) at the per-gene rate
    "cosine_e30_head10_lr6e-3": _cosine(30, lr=6e-3, gene_lr_scale=10.0),
    "cosine_e60_head10_lr6e-3": _cosine(60, lr=6e-3, gene_lr_scale=10.0),
    # the same without the condition offset in the fast group (does a fast offset pull the
    # prediction towards the other types' mean response? on 4 folds it did not: worse without)
    "cosine_e30_head10_nooffset_lr6e-3": _cosine(30, lr=6e-3, gene_lr_scale=10.0),
}


#: Candidates whose output bias starts at 0, as before ``TRVAEModule.start_from_profiles``.
STARTED_AT_ZERO = set(CANDIDATES) - {"package_default", "default_336_steps"}


class StepRecorder(pl.Callback):
    """Optimiser steps and the wall time of each training batch of the last fit."""

    def on_train_start(self, trainer, pl_module):
        self.seconds = []
        self.threads = torch.get_num_threads()  # train()'s count (scanpy resets it outside)

    def on_train_batch_start(self, *args):
        self._start = time.perf_counter()

    def on_train_batch_end(self, *args):
        self.seconds.append(time.perf_counter() - self._start)

    def on_train_end(self, trainer, pl_module):
        self.steps = trainer.global_step


def reference() -> pd.DataFrame:
    """Today's default from ``mmd_ablation.csv``: Kang, calibrated readout, both settings."""
    df = pd.read_csv(RESULTS / "mmd_ablation.csv")
    df = df[(df.design == "kang") & (df.readout == "calibrated")]
    df = df[df.method.isin(["reweighted", "trvae"])].copy()
    df["labels"] = df.method == "reweighted"
    df["candidate"] = "today (mmd_ablation.csv)"
    df["steps"] = df.epochs * EPOCH  # early stopping ends at an epoch's end
    return df[["candidate", "labels", "group", "seed", "pearson_delta_deg", "steps"]]


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per candidate and setting: mean ± sd of Δ-Pearson over fits, steps, ms per step."""
    rows = []
    for (candidate, labels), g in df.groupby(["candidate", "labels"], sort=False):
        folds = g.groupby("group").pearson_delta_deg
        rows.append(
            {
                "candidate": candidate,
                "labels": "cell_type" if labels else "none",
                "fits": len(g),
                "folds": g.group.nunique(),
                "Δ-Pearson DEG": f"{g.pearson_delta_deg.mean():.3f} ± "
                f"{g.pearson_delta_deg.std():.3f}",
                "within-fold sd": round(folds.std().mean(), 3) if g.seed.nunique() > 1 else "",
                "steps": f"{g.steps.mean():.0f} ({g.steps.min():.0f}–{g.steps.max():.0f})",
                "ms/step": round(g.step_ms.median(), 1) if g.step_ms.notna().any() else "",
                "load": f"{g.loadavg.min():.1f}–{g.loadavg.max():.1f}"
                if g.loadavg.notna().any()
                else "",
            }
        )
    return pd.DataFrame(rows).fillna("")


def paired(df: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    """Each candidate minus today's default on the same (setting, fold, seed) fits."""
    keys = ["labels", "group", "seed"]
    today = ref.set_index(keys).pearson_delta_deg
    fold_means = ref.groupby(["labels", "group"]).pearson_delta_deg.mean()
    rows = []
    for (candidate, labels), g in df.groupby(["candidate", "labels"], sort=False):
        diff = g.set_index(keys).pearson_delta_deg - today.reindex(g.set_index(keys).index)
        rows.append(
            {
                "candidate": candidate,
                "labels": "cell_type" if labels else "none",
                "fits": int(diff.notna().sum()),
                "candidate mean": round(g.pearson_delta_deg.mean(), 4),
                "today, same fits": round(today.reindex(g.set_index(keys).index).mean(), 4),
                "difference": round(diff.mean(), 4),
                "today, same folds, all 3 seeds": round(
                    fold_means.reindex(pd.MultiIndex.from_frame(g[["labels", "group"]])).mean(), 4
                ),
            }
        )
    return pd.DataFrame(rows)


def write_report(df: pd.DataFrame, path: Path) -> None:
    ref = reference()
    lines = [
        *report_header(
            "Training-budget candidates on Kang",
            "python benchmarks/speed_candidates.py --candidates NAME ... --folds ... --seeds ...",
            see="its docstring says what each candidate is",
        ),
        "Leave-one-cell-type-out folds of Kang (1,975 cells × 6,998 genes), default model,",
        "calibrated readout with 5 draws per cell, Pearson r of the predicted change over the",
        "held-out type's top-100 DEGs (as `mmd_ablation.py`). `labels`: `cell_type` registered",
        "(the Quickstart: reweighted MMD) or none. Mean ± sd over all fits (folds × seeds);",
        "within-fold sd: sd over seeds, averaged over folds. `steps`: optimiser steps per fit",
        "(mean, range). `ms/step`: median wall time of a training step at the torch threads",
        "given, on a **shared** 2-core machine at the 1-minute load averages shown (other",
        "sessions' jobs ran beside it): only steps and accuracy are load-independent.",
        "",
        "## All fits",
        "",
        "`package_default`: `train()`'s defaults as committed with this report (a budget of 420",
        "steps, early stopping, lr 6e-3 with a cosine, per-gene parameters at 10×, the output",
        "bias started at the genes' average profile). `previous_default`: the defaults before",
        "that start (840 steps, the output bias started at 0). `cosine_e30_head10_lr6e-3` is the",
        "previous default's rates over 420 steps from a zero bias (it ran 14 of its fits per",
        "setting as the defaults of an earlier commit). `default_336_steps`: the default with",
        "a budget of 336 steps. Every other candidate starts the output bias at 0.",
        "",
        summary(pd.concat([ref, df], ignore_index=True)).to_markdown(index=False),
        "",
        "## Against today's default on the same folds and seeds",
        "",
        "Today's figures are those of `mmd_ablation.csv` (`reweighted` with labels, `trvae`",
        "without; its step counts are epochs × 14, the patience window included). Seed 0 of",
        "today's default happened to be its best seed (0.940 with labels over 7 folds, against",
        "0.921 and 0.925), so the last column also gives today's mean over its 3 seeds.",
        "",
        paired(df, ref).to_markdown(index=False),
        "",
        "Torch threads in `train()`: "
        f"{', '.join(str(int(t)) for t in sorted(df.threads.unique()))} (`OMP_NUM_THREADS=1`, "
        "which `train()` applies).",
        "",
    ]
    path.write_text("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS, seeds=[0], kang=True)
    options.add_argument("--candidates", nargs="+", choices=list(CANDIDATES), required=True)
    options.add_argument("--folds", nargs="*", help="cell types to hold out (default: all 7)")
    options.add_argument("--no-labels", dest="labels", action="store_false")
    args = options.parse_args()
    quiet()

    adata = ad.read_h5ad(args.data)
    folds = args.folds or list(adata.obs["cell_type"].cat.categories)
    csv = args.out / "speed_candidates.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    method = {"labels_key": "cell_type"} if args.labels else {}
    for candidate in args.candidates:
        for group in folds:
            for seed in args.seeds:
                key = {"candidate": candidate, "labels": args.labels, "group": group, "seed": seed}
                if len(done) and (done[list(key)] == pd.Series(key)).all(axis=1).any():
                    continue
                # the "gene" candidates scale the per-gene vectors only, not the output weights
                gene = GENE_PARAMETERS
                if "gene" in candidate:
                    gene = tuple(n for n in gene if n != "mean_head.weight")
                if "nooffset" in candidate:
                    gene = tuple(n for n in gene if n != "condition_offset")
                sctrvae.train._training_plan.GENE_PARAMETERS = gene
                recorder = StepRecorder()
                load = os.getloadavg()[0]
                start = time.perf_counter()
                start_at_zero = candidate in STARTED_AT_ZERO
                with output_bias_from_zero() if start_at_zero else nullcontext():
                    rows = sctrvae.benchmark.leave_one_out(
                        adata,
                        *KANG_FOLDS,
                        groups=[group],
                        methods={candidate: method},
                        train_kwargs={**CANDIDATES[candidate], "callbacks": [recorder]},
                        references=(),
                        n_samples=5,
                        seed=seed,
                    )
                row = rows[rows.readout == "calibrated"].iloc[0]
                done = pd.concat(
                    [
                        done,
                        pd.DataFrame(
                            [
                                {
                                    **key,
                                    "pearson_delta_deg": row.pearson_delta_deg,
                                    "r2_mean_deg": row.r2_mean_deg,
                                    "steps": recorder.steps,
                                    "step_ms": 1e3 * np.median(recorder.seconds[5:]),
                                    "train_seconds": row.train_seconds,
                                    "fold_seconds": time.perf_counter() - start,
                                    "threads": recorder.threads,
                                    "loadavg": load,
                                }
                            ]
                        ),
                    ],
                    ignore_index=True,
                )
                done.to_csv(csv, index=False)
                write_report(done, args.out / "speed_candidates.md")
                print(
                    f"{candidate} labels={args.labels} {group} seed {seed}: "
                    f"{row.pearson_delta_deg:.3f}, {recorder.steps} steps, "
                    f"{time.perf_counter() - start:.0f} s (load {load:.1f})",
                    flush=True,
                )


if __name__ == "__main__":
    main()
