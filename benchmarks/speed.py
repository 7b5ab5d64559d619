"""Training speed of the default ``TRVAEModel`` and ``train()``: Kang folds, simulated shapes, load.

    python benchmarks/speed.py              # writes benchmarks/results/speed.{csv,md}
    python benchmarks/speed.py --quick      # 2 Kang folds, 1 seed, the small shapes, short load

Three parts, each a section of the report:

- **kang**: the 7 leave-one-cell-type-out folds × 3 seeds, with ``labels_key="cell_type"`` (the
  Quickstart) and without labels: default model, ``train()`` and calibrated ``predict()``, timed
  together per fold; optimiser steps; Pearson r of the predicted change over the held-out type's
  top-100 DEGs, against today's figure from ``results/mmd_ablation.csv``.
- **simulated**: :func:`sctrvae.datasets.simulate` at ≈1.5k × 1.3k, 5k × 300 and 20k × 2k. One
  (cell type, stimulated) is held out; the score is the Pearson correlation of the predicted
  log fold change (stimulated vs control, both decoded from the held-out type's control cells)
  with the simulator's true one, over all genes. Default ``train()`` (timed with the two
  predictions) against the previous default: a budget of at least 840 steps and the output
  bias started at 0 (``_common.output_bias_from_zero``).
- **load**: seconds per training step on Kang, in a fresh process per setting (torch threads,
  ``OMP_WAIT_POLICY``, ``train()``'s own choice), alone and with three competing CPU-bound
  processes that this script starts and stops itself.

Data: ``$SCTRVAE_KANG_PATH`` or ``../shared/data/kang_pbmc_ifnb_1975.h5ad`` beside the repository.
Run on an otherwise idle machine: everything else running is competing load. The report
states the load averages and the other processes using CPU at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from _common import RESULTS, ROOT, output_bias_from_zero, parser, report_header

SHAPES = {"1.5k x 1.3k": (1556, 1267), "5k x 300": (5000, 300), "20k x 2k": (20000, 2000)}
#: (label, torch threads: "all" usable CPUs, 1, or None for train()'s default; torch imported
#: before sctrvae, so that the package's OMP_WAIT_POLICY=PASSIVE comes too late for libgomp;
#: environment variables of the process)
LOAD_SETTINGS = [
    ("all CPUs, libgomp's default wait policy", "all", True, {}),
    ("all CPUs, OMP_WAIT_POLICY=PASSIVE", "all", False, {}),
    # libgomp spins this many rounds (about 0.1 ms) before it sleeps, whatever the policy
    ("all CPUs, PASSIVE after a short spin", "all", False, {"GOMP_SPINCOUNT": "10000"}),
    ("1 thread", 1, False, {}),
    ("train() default (idle CPUs), PASSIVE", None, False, {}),
]
#: The fewest optimiser steps of the default budget before the output bias had a start
PREVIOUS_MIN_STEPS = 840
BUSY = "import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"


def kang_folds(path: Path, groups: list[str] | None, seeds: range, labels: bool) -> pd.DataFrame:
    """Default model, ``train()`` and calibrated ``predict()`` per Kang fold and seed, timed.

    ``fold_seconds`` is what a user waits for: ``setup_anndata``, the model, ``train()`` and
    ``predict(readout="calibrated")`` of the held-out type's control cells (default draws).
    The score is the Pearson r of the predicted change over the held-out type's top-100 DEGs.
    """
    import sctrvae  # noqa: I001  (first, as a user's script: before lightning imports torch)
    import anndata as ad
    import lightning.pytorch as pl
    import scvi
    from sctrvae.metrics import log_normalized, score_log_expression
    from sctrvae.tl._held_out import GroupedData

    class StepCounter(pl.Callback):
        def on_train_end(self, trainer, pl_module):
            self.steps = trainer.global_step

    adata = ad.read_h5ad(path)
    lognorm = log_normalized(adata)
    data = GroupedData(adata, "cell_type", "condition", "control", "stimulated", n_degs=100)
    folds = [(g,) for g in groups or list(adata.obs["cell_type"].cat.categories)]
    rows = []
    for seed in seeds:
        for keep, (held,) in data.folds(folds):
            group, deg_mask = held.name, held.deg_mask
            train, source = adata[keep].copy(), adata[held.source_cells].copy()
            counter = StepCounter()
            scvi.settings.seed = seed
            load = os.getloadavg()[0]
            start = time.perf_counter()
            sctrvae.TRVAEModel.setup_anndata(
                train, condition_key="condition", labels_key="cell_type" if labels else None
            )
            model = sctrvae.TRVAEModel(train)
            model.train(enable_progress_bar=False, callbacks=[counter])
            trained = time.perf_counter()
            pred = model.predict(source, target_condition="stimulated", readout="calibrated")
            end = time.perf_counter()
            scores = score_log_expression(
                pred.layers["log_normalized"],
                lognorm[held.target_cells],
                lognorm[held.source_cells],
                deg_mask,
            )
            rows.append(
                {
                    "part": "kang",
                    "case": group,
                    "run": "cell_type labels" if labels else "no labels",
                    "seed": seed,
                    "fold_seconds": end - start,
                    "train_seconds": trained - start,
                    "predict_seconds": end - trained,
                    "steps": counter.steps,
                    "pearson_delta_deg": scores["pearson_delta_deg"],
                    "r2_mean_deg": scores["r2_mean_deg"],
                    "loadavg_before": load,
                }
            )
            print(
                f"kang {group} seed {seed} labels={labels}: {end - start:.1f} s, "
                f"{counter.steps} steps, {scores['pearson_delta_deg']:.3f} (load {load:.1f})",
                flush=True,
            )
    return pd.DataFrame(rows)


def _predicted_lfc(model, cells) -> np.ndarray:
    """Log mean predicted proportions, stimulated minus control, from the same control cells."""
    stim = model.predict(cells, target_condition="stimulated").layers["normalized"].mean(0)
    ctrl = model.predict(cells, target_condition="control").layers["normalized"].mean(0)
    return np.log(stim) - np.log(ctrl)


def simulated_fit(shape: str, seed: int) -> list[dict]:
    """Default ``train()`` and the previous default (840 steps, the output bias started at 0).

    One held-out simulated type; ``fold_seconds`` counts ``train()`` and the two ``predict()``
    calls of the score.
    """
    import scvi

    import sctrvae
    from sctrvae.train._training_settings import step_budget, steps_per_epoch

    n_cells, n_genes = SHAPES[shape]
    adata = sctrvae.datasets.simulate(n_cells, n_genes, seed=seed)
    truth = adata.uns["simulation"]["log_means"]
    held = (adata.obs.cell_type == "type_0") & (adata.obs.condition == "stimulated")
    cells = adata[(adata.obs.cell_type == "type_0") & (adata.obs.condition == "control")].copy()
    train = adata[~held.to_numpy()].copy()
    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    true_lfc = truth[0, 1] - truth[0, 0]
    rows = []
    for run in ("default", "previous default"):
        scvi.settings.seed = seed
        kwargs = {"enable_progress_bar": False}
        if run == "previous default":
            with output_bias_from_zero():
                model = sctrvae.TRVAEModel(train)
            budget = step_budget(steps_per_epoch(train.n_obs, None, 128))
            kwargs["max_steps"] = max(PREVIOUS_MIN_STEPS, budget)
        else:
            model = sctrvae.TRVAEModel(train)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        model.train(**kwargs)
        trained = time.perf_counter()
        lfc = _predicted_lfc(model, cells)
        end = time.perf_counter()
        trainer = model.trainer
        rows.append(
            {
                "part": "simulated",
                "case": shape,
                "run": run,
                "seed": seed,
                "fold_seconds": end - start,
                "train_seconds": trained - start,
                "predict_seconds": end - trained,
                "epochs": trainer.current_epoch,
                "steps": trainer.global_step,
                "pearson_lfc": float(np.corrcoef(lfc, true_lfc)[0, 1]),
                "loadavg_before": load,
            }
        )
    return rows


def child_step_time(threads: int | str | None, torch_first: bool, epochs: int, path: str) -> None:
    """Run in a fresh process: print seconds per training step on Kang as JSON."""
    if torch_first:
        import torch  # libgomp loads before sctrvae can set OMP_WAIT_POLICY
    import sctrvae  # noqa: I001  (otherwise first: lightning below imports torch)
    import anndata as ad
    import lightning.pytorch as pl
    import scvi
    import torch

    if threads is not None:
        # train() keeps a thread count chosen through scvi-tools' setting
        scvi.settings.num_threads = (
            sctrvae._threads.available_cpus() if threads == "all" else threads
        )

    class StepTimer(pl.Callback):
        def __init__(self):
            self.seconds = []

        def on_train_batch_start(self, *args):
            self.start = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.seconds.append(time.perf_counter() - self.start)

    adata = ad.read_h5ad(path)
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata)
    timer = StepTimer()
    model.train(
        max_epochs=epochs, early_stopping=False, callbacks=[timer], enable_progress_bar=False
    )
    print(
        json.dumps(
            {
                "step_seconds": float(np.median(timer.seconds[3:])),
                "threads": torch.get_num_threads(),
            }
        )
    )


def load_runs(path: Path, epochs: int, busy_seconds: int) -> pd.DataFrame:
    """Seconds per step for each setting, alone and beside three busy processes."""
    rows = []
    for loaded in (False, True):
        for label, threads, torch_first, variables in LOAD_SETTINGS:
            drop = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
            env = {k: v for k, v in os.environ.items() if k not in drop}
            env.update(variables, PYTHONPATH=str(ROOT / "src"))
            args = json.dumps([threads, torch_first, epochs, str(path)])
            busy = []
            if loaded:
                code = BUSY.format(seconds=busy_seconds)
                busy = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(3)]
            load_before = os.getloadavg()[0]
            try:
                out = subprocess.run(
                    [sys.executable, __file__, "--child", args],
                    env=env,
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=busy_seconds if loaded else None,
                )
            finally:
                for process in busy:
                    process.kill()
                    process.wait()
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                {
                    "part": "load",
                    "case": label,
                    "run": "3 busy processes" if loaded else "alone",
                    "threads": result["threads"],
                    "step_ms": 1e3 * result["step_seconds"],
                    "loadavg_before": load_before,
                }
            )
    return pd.DataFrame(rows)


def today(labels: bool) -> float:
    """Today's mean Δ-Pearson over DEGs on the 7 Kang folds × 3 seeds (``mmd_ablation.csv``)."""
    df = pd.read_csv(RESULTS / "mmd_ablation.csv")
    method = "reweighted" if labels else "trvae"
    df = df[(df.design == "kang") & (df.readout == "calibrated") & (df.method == method)]
    return float(df.pearson_delta_deg.mean())


def host_reference_ms(repeats: int = 50) -> float:
    """Median milliseconds of a fixed torch workload the size of a Kang step's dense layers.

    Independent of the package: the same figure on two runs says the machine ran at the same
    speed (shared hosts are not always as fast as their idle load average suggests).
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    cells = torch.rand(128, 6998, generator=generator)
    weights = torch.rand(6998, 128, generator=generator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        hidden = torch.log1p(cells) @ weights
        torch.softmax(hidden @ weights.T, dim=-1).log().sum()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times))


def other_processes() -> str:
    """The processes using CPU beside this one (``ps``), for the report."""
    out = subprocess.run(
        ["ps", "-eo", "pid,pcpu,etime,args", "--sort=-pcpu"], capture_output=True, text=True
    ).stdout.splitlines()
    mine = {str(os.getpid())}
    busy = [line for line in out[1:] if line.split()[0] not in mine and float(line.split()[1]) > 5]
    return "; ".join(" ".join(line.split()[:6])[:140] for line in busy[:8]) or "none above 5 % CPU"


def _mean_sd(values: pd.Series, digits: int = 3) -> str:
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def write_report(df: pd.DataFrame, out: Path, wall: float, quick: bool, context: dict) -> None:
    lines = [
        *report_header(
            "Training speed of the default model and train()",
            f"python benchmarks/speed.py{' --quick' if quick else ''}",
            see="see `benchmarks/README.md`, Speed",
        ),
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"CPUs usable: {len(os.sched_getaffinity(0))}; torch threads in train(): "
        f"{context['threads']}; total wall time {wall / 60:.1f} min. "
        f"Load average (1, 5, 15 min) at the start: {context['load_start']}, at the end: "
        f"{context['load_end']}. Other processes using CPU at the start: "
        f"{context['others_start']}; at the end: {context['others_end']}. "
        "Figures are only as idle as the machine was. Host reference (a fixed torch workload the "
        f"size of a Kang step's dense layers, `host_reference_ms`): {context['host_start']:.1f} ms "
        f"at the start, {context['host_end']:.1f} ms at the end (compare it across runs).",
        "",
    ]
    kang = df[df.part == "kang"]
    for run, fits in kang.groupby("run", sort=False):
        labels = run == "cell_type labels"
        per_fold = fits.groupby("case", sort=False).agg(
            fold_seconds=("fold_seconds", "mean"),
            fold_seconds_sd=("fold_seconds", "std"),
            predict_seconds=("predict_seconds", "mean"),
            steps=("steps", "mean"),
            pearson_delta_deg=("pearson_delta_deg", "mean"),
            pearson_sd=("pearson_delta_deg", "std"),
            r2_mean_deg=("r2_mean_deg", "mean"),
        )
        reference = today(labels)
        lines += [
            f"## Kang leave-one-cell-type-out, {run}, calibrated readout",
            "",
            f"Seeds {sorted(int(s) for s in fits.seed.unique())}; per fold: means over seeds "
            "and their sd. `fold_seconds`: setup, model, `train()` and "
            '`predict(readout="calibrated")`.',
            "",
            per_fold.round(3).to_markdown(),
            "",
            f"Over {len(fits)} fits: seconds per fold {_mean_sd(fits.fold_seconds, 1)} "
            f"(median {fits.fold_seconds.median():.1f}; goal ≤ 20), optimiser steps "
            f"{fits.steps.mean():.0f} ({fits.steps.min()}–{fits.steps.max()}), Δ-Pearson DEG "
            f"{_mean_sd(fits.pearson_delta_deg)} against {reference:.3f} before the cosine "
            f"schedule (`mmd_ablation.csv`; goal: within 0.005, ≥ {reference - 0.005:.3f}).",
            "",
        ]
    sim = df[df.part == "simulated"]
    if len(sim):
        cols = ["fold_seconds", "train_seconds", "steps", "pearson_lfc"]
        table = sim.groupby(["case", "run"], sort=False)[cols].agg(["mean", "std"])
        table.columns = [f"{c}_{stat}" for c, stat in table.columns]
        lines += [
            "## Simulated shapes: default train() and the previous default",
            "",
            f"Seeds {sorted(int(s) for s in sim.seed.unique())}; `fold_seconds`: `train()` and "
            "two `predict()` calls (goal ≤ 10 s for the default at 1.5k × 1.3k and 5k × 300); "
            "`pearson_lfc`: predicted vs true log fold change of the held-out type over all "
            "genes; the previous default (≥ 840 steps, the output bias started at 0) is the "
            "accuracy to keep.",
            "",
            table.round(3).to_markdown(),
            "",
        ]
    load = df[df.part == "load"]
    if len(load):
        table = load.pivot_table(index="case", columns="run", values="step_ms", sort=False)
        table["slowdown"] = table["3 busy processes"] / table["alone"]
        lines += [
            "## Seconds per step beside three busy processes",
            "",
            "Median ms per training step on Kang (128 cells × 6998 genes), one fresh process per "
            "setting; the busy processes are Python loops started and stopped by the script.",
            "",
            table.round(1).to_markdown(),
            "",
            f"Load averages before each run: {', '.join(f'{x:.1f}' for x in load.loadavg_before)}.",
            "",
        ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS / "speed", kang=True)
    options.add_argument("--quick", action="store_true", help="2 folds, 1 seed, small shapes")
    options.add_argument("--parts", nargs="+", default=["kang", "simulated", "load"])
    options.add_argument("--seeds", type=int, default=3, help="seeds 0 to this number - 1")
    options.add_argument("--shapes", nargs="+", choices=list(SHAPES), help="simulated shapes")
    options.add_argument("--child", help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.child:
        child_step_time(*json.loads(args.child))
        return
    path = args.data
    import sctrvae  # before torch, as in a user's script

    context = {
        "load_start": ", ".join(f"{x:.2f}" for x in os.getloadavg()),
        "others_start": other_processes(),
        "threads": os.environ.get("OMP_NUM_THREADS") or sctrvae._threads.available_cpus(),
        "host_start": host_reference_ms(),
    }
    start = time.perf_counter()
    frames = []
    if "kang" in args.parts:
        groups = ["CD4T", "B"] if args.quick else None
        seeds = range(1 if args.quick else args.seeds)
        for labels in (True,) if args.quick else (True, False):
            frames.append(kang_folds(path, groups, seeds, labels))
    if "simulated" in args.parts:
        shapes = args.shapes or (list(SHAPES)[:2] if args.quick else list(SHAPES))
        seeds = range(1 if args.quick else args.seeds)
        frames.append(
            pd.DataFrame([r for s in shapes for seed in seeds for r in simulated_fit(s, seed)])
        )
    if "load" in args.parts:
        frames.append(load_runs(path, epochs=2 if args.quick else 4, busy_seconds=600))
    df = pd.concat(frames, ignore_index=True)
    context["load_end"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    context["others_end"] = other_processes()
    context["host_end"] = host_reference_ms()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out.with_suffix(".csv"), index=False)
    write_report(df, args.out, time.perf_counter() - start, args.quick, context)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
