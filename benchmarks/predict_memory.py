"""Time and peak memory of predicting every control cell: the mean readout against the calibrated.

    python benchmarks/predict_memory.py --cells 20000             # writes results/predict_memory.*
    python benchmarks/predict_memory.py --cells 20000 100000 --with-draws-up-to 20000

For each size, ``sctrvae.datasets.simulate(n_cells, n_genes=2000, seed=0)`` is fitted for 50
optimiser steps (``scvi.settings.seed = 0``), then every control cell is predicted into
``adata.layers`` (``key_added``) in one of these calls:

- ``mean``: ``predict(readout="mean", key_added=...)``, the AnnData of the means returned too;
- ``mean, layer only``: the same with ``return_anndata=False``;
- ``calibrated, layer only``: ``readout="calibrated"``, ``return_anndata=False``, its default
  draws (per cell what gives the predicted cells, one group here, 20,000 draws: 10 up to 2,000
  cells, one from 20,000);
- ``calibrated, 10 draws per cell, layer only``: the same with ``n_samples=10``, the default
  before the draws followed the group's size;
- ``calibrated, with draws``: ``readout="calibrated"``, the AnnData of all draws returned too
  (only up to ``--with-draws-up-to`` cells: it holds 12 bytes per draw, predicted cell and gene).

Each call runs in a fresh subprocess (simulation and fit repeated, same seeds), so that its
peak is its own: the process's high-water mark (``VmHWM``) is reset just before ``predict`` and
read after it (Linux ``/proc/self/clear_refs``), next to ``PeakRSS``'s samples every 50 ms.
Also recorded: the seconds ``predict`` spent drawing negative binomial counts, and the load
average (other jobs on the machine slow the timings).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, PeakRSS, high_water_mb, parser, quiet, report_header

N_GENES = 2000
TRAIN_STEPS = 50
#: (name, readout, return_anndata, n_samples) of the calls measured.
CALLS = {
    "mean": ("mean", True, None),
    "mean, layer only": ("mean", False, None),
    "calibrated, layer only": ("calibrated", False, None),
    "calibrated, 10 draws per cell, layer only": ("calibrated", False, 10),
    "calibrated, with draws": ("calibrated", True, None),
}


def measure(n_cells: int, call: str) -> dict:
    """One call, in this process: simulate, fit, predict every control cell."""
    quiet()
    import numpy as np
    import scvi

    import sctrvae
    from sctrvae.distributions._negative_binomial import SparseNegativeBinomial

    readout, return_anndata, n_samples = CALLS[call]
    adata = sctrvae.datasets.simulate(n_cells=n_cells, n_genes=N_GENES, chunk_size=10_000, seed=0)
    scvi.settings.seed = 0
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = sctrvae.TRVAEModel(adata)
    model.train(max_steps=TRAIN_STEPS, enable_progress_bar=False)
    control = np.flatnonzero(adata.obs["condition"] == "control")

    drawing = [0.0]
    sample = SparseNegativeBinomial.sample

    def timed_sample(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return sample(self, *args, **kwargs)
        finally:
            drawing[0] += time.perf_counter() - start

    SparseNegativeBinomial.sample = timed_sample
    load_before = os.getloadavg()[0]
    before = PeakRSS.current_mb()
    high_water_mb(reset=True)
    with PeakRSS() as sampled:
        start = time.perf_counter()
        pred = model.predict(
            adata,
            indices=control,
            target_condition="stimulated",
            readout=readout,
            n_samples=n_samples,
            key_added="predicted",
            return_anndata=return_anndata,
        )
        seconds = time.perf_counter() - start
    return {
        "cells": n_cells,
        "predicted_cells": int(control.size),
        "call": call,
        "seconds": seconds,
        "nb_draw_seconds": drawing[0],
        "rss_before_mb": before,
        "peak_rss_mb": max(high_water_mb(), sampled.peak_mb),
        "peak_rss_sampled_mb": sampled.peak_mb,
        "layer_mb": adata.layers["predicted"].nbytes / 2**20,
        "returned_mb": 0.0
        if pred is None
        else sum(a.nbytes for a in (pred.X, *pred.layers.values())) / 2**20,
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }


def run(n_cells: int, call: str) -> dict:
    """:func:`measure` in a fresh subprocess."""
    command = [sys.executable, __file__, "--worker", str(n_cells), call]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows: list[dict], out: Path, command: str, wall: float) -> None:
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix(".csv"), index=False)
    df["increase_mb"] = df["peak_rss_mb"] - df["rss_before_mb"]
    table = df.assign(
        seconds=df["seconds"].round(1),
        nb_draw_seconds=df["nb_draw_seconds"].round(1),
        **{c: df[c].round(0).astype(int) for c in ("rss_before_mb", "peak_rss_mb", "increase_mb")},
        load=df["load_before"].round(1).astype(str) + " / " + df["load_after"].round(1).astype(str),
    )[
        [
            "cells",
            "predicted_cells",
            "call",
            "seconds",
            "nb_draw_seconds",
            "rss_before_mb",
            "peak_rss_mb",
            "increase_mb",
            "load",
        ]
    ]
    ratios = []
    for cells, part in df.groupby("cells"):
        by_call = part.set_index("call")
        if "mean" not in by_call.index:
            continue
        mean = by_call.loc["mean"]
        for call in by_call.index.drop(["mean", "mean, layer only"], errors="ignore"):
            other = by_call.loc[call]
            ratios.append(
                {
                    "cells": cells,
                    "call": call,
                    "time / mean's": round(other["seconds"] / mean["seconds"], 1),
                    "peak / mean's": round(other["peak_rss_mb"] / mean["peak_rss_mb"], 2),
                    "increase / mean's": round(other["increase_mb"] / mean["increase_mb"], 2),
                }
            )
    # constants: a line through each call's sizes (fixed cost + cost per predicted cell)
    constants = []
    for call, part in df.groupby("call", sort=False):
        row = {"call": call}
        for column, unit, scale in (
            ("seconds", "ms", 1e3),
            ("increase_mb", "MiB", 1.0),
        ):
            if part["predicted_cells"].nunique() > 1:
                slope, fixed = np.polyfit(part["predicted_cells"], part[column], 1)
            else:
                slope, fixed = part[column].iloc[0] / part["predicted_cells"].iloc[0], 0.0
            per_cell_unit = "KiB" if unit == "MiB" else unit
            row[f"{per_cell_unit} per predicted cell"] = round(
                slope * (1024 if unit == "MiB" else scale), 2
            )
            row[f"fixed {'s' if unit == 'ms' else unit}"] = round(fixed, 1)
        constants.append(row)
    lines = [
        *report_header(
            "Prediction of every control cell: time and peak memory",
            command,
            see="see `benchmarks/README.md`, Prediction memory",
            wall=wall,
        ),
        f"`sctrvae.datasets.simulate(n_cells, n_genes={N_GENES}, seed=0)`, fitted "
        f"{TRAIN_STEPS} steps; every control cell predicted into `adata.layers` with "
        "`key_added`; calibrated: its default draws per cell (one group of predicted cells: 10 "
        "up to 2,000 cells, 1 from 20,000) or 10 where the call says so. Each row is a fresh "
        "process. `rss_before_mb`: the process before `predict` (data, model, imports); "
        "`peak_rss_mb`: its high-water mark "
        "during `predict`; `increase_mb`: the difference. `nb_draw_seconds`: of `seconds`, "
        "those spent drawing negative binomial counts. `load`: the machine's 1-minute load "
        "average before / after the call (2 cores; compare seconds within one run, beside "
        "its load).",
        "",
        table.to_markdown(index=False),
        "",
        "## Ratios to the mean readout (same size)",
        "",
        pd.DataFrame(ratios).to_markdown(index=False) if ratios else "(no mean row)",
        "",
        "## Constants, 2,000 genes",
        "",
        "A line through each call's sizes: seconds and MiB of increase = fixed + per cell × "
        "predicted cells (with one size: all per cell).",
        "",
        pd.DataFrame(constants).to_markdown(index=False),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    if sys.argv[1:2] == ["--worker"]:
        print(json.dumps(measure(int(sys.argv[2]), sys.argv[3])))
        return
    options = parser(__doc__, RESULTS / "predict_memory")
    options.add_argument("--cells", nargs="+", type=int, default=[20_000])
    options.add_argument(
        "--with-draws-up-to",
        type=int,
        default=20_000,
        help="sizes up to this also run the calibrated call that returns every draw",
    )
    options.add_argument("--append", action="store_true", help="add to the rows already in the CSV")
    args = options.parse_args()
    start = time.perf_counter()
    rows = []
    csv = args.out.with_suffix(".csv")
    if args.append and csv.exists():
        import pandas as pd

        rows = pd.read_csv(csv).to_dict("records")
        rows = [r for r in rows if r["cells"] not in args.cells]
    for n_cells in args.cells:
        for call in CALLS:
            if call == "calibrated, with draws" and n_cells > args.with_draws_up_to:
                continue
            row = run(n_cells, call)
            print(
                f"{n_cells} cells, {call}: {row['seconds']:.1f} s, peak "
                f"{row['peak_rss_mb']:.0f} MiB (before {row['rss_before_mb']:.0f}), load "
                f"{row['load_before']:.1f}",
                flush=True,
            )
            rows.append(row)
    command = "python benchmarks/predict_memory.py " + " ".join(sys.argv[1:])
    report(rows, args.out, command.strip(), time.perf_counter() - start)


if __name__ == "__main__":
    main()
