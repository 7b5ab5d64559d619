"""The whole trust workflow at 20k, 100k and 200k cells: each step's time and peak memory.

    python benchmarks/workflow_scale.py                   # writes results/workflow_scale.{csv,md}
    python benchmarks/workflow_scale.py --sizes 20000     # one size

Data: ``sctrvae.datasets.simulate_donors`` (2,000 genes, 8 cell types, 6 donors, seed 0), written
once to ``benchmarks/.data-scale`` by a separate process (simulating 100k cells alone peaks at
about 9 GB); 200k cells are the 100k cells twice, shuffled (duplicated cells cost what new ones
do). Each size runs in a fresh process, as a user would: read the file, hold out ``type_0``'s
stimulated cells, then

1. ``fit``: ``setup_anndata`` + ``TRVAEModel`` + ``train()`` at the defaults, on the other cells;
2. ``transfer_check``: ``sctrvae.tl.transfer_check`` at its defaults (right after the fit, so
   that its peak is compared with the fit's on the same footing);
3. ``predict``: ``type_0``'s control cells, ``readout="calibrated"``, into a layer of the full
   AnnData (``key_added``, ``return_anndata=False``);
4. ``hedge``: ``sctrvae.tl.hedge`` of that layer;
5. ``differential_response``: every cell type, with the check;
6. ``latent``: ``get_latent_representation()`` of the training cells.

Per step: wall seconds, the resident memory before it and the process's peak during it (its
``VmHWM`` reset before the step), hence what the step added; the report adds how each grows from
one size to the next and the check's peak against the fit's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
from _common import RESULTS, PeakRSS, high_water_mb, parser, quiet, report_header

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data-scale"
SIMULATED_MAX = 100_000
HELD_OUT = "type_0"
SIZES = (20_000, 100_000, 200_000)


def data_path(n_cells: int) -> Path:
    """The .h5ad of ``n_cells`` cells, written (by this process) if missing."""
    import anndata as ad

    import sctrvae

    path = DATA / f"donors_{n_cells}x2000.h5ad"
    if path.exists():
        return path
    DATA.mkdir(exist_ok=True)
    if n_cells <= SIMULATED_MAX:
        adata = sctrvae.datasets.simulate_donors(
            n_cells=n_cells, n_genes=2000, n_cell_types=8, n_donors=6, seed=0
        )
    else:
        base = ad.read_h5ad(data_path(SIMULATED_MAX))
        rows = np.random.default_rng(0).permutation(np.resize(np.arange(base.n_obs), n_cells))
        adata = base[rows].copy()
        adata.obs_names = [f"cell_{i}" for i in range(n_cells)]
    adata.uns.clear()
    adata.write_h5ad(path)
    return path


def workflow(path: str) -> list[dict]:
    """The six steps on one file, in this process."""
    import anndata as ad

    import sctrvae

    quiet()
    adata = ad.read_h5ad(path)
    obs = adata.obs
    held = ((obs.cell_type == HELD_OUT) & (obs.condition == "stimulated")).to_numpy()
    source = np.flatnonzero((obs.cell_type == HELD_OUT) & (obs.condition == "control"))
    train = adata[~held].copy()
    rows, state = [], {}

    def step(name: str, call) -> None:
        before = PeakRSS.current_mb()
        load = os.getloadavg()[0]
        high_water_mb(reset=True)
        start = time.perf_counter()
        with PeakRSS() as sampled:
            state[name] = call()
        seconds = time.perf_counter() - start
        rows.append(
            {
                "cells": adata.n_obs,
                "step": name,
                "seconds": round(seconds, 1),
                "rss_before_mb": round(before),
                "peak_rss_mb": round(max(high_water_mb(), sampled.peak_mb)),
                "load_before": load,
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)

    def fit():
        sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
        model = sctrvae.TRVAEModel(train)
        model.train(enable_progress_bar=False)
        return model

    step("fit", fit)
    model = state["fit"]
    step(
        "transfer_check",
        lambda: sctrvae.tl.transfer_check(
            model, "cell_type", "control", "stimulated", progress=False
        ),
    )
    step(
        "predict",
        lambda: model.predict(
            adata,
            indices=source,
            target_condition="stimulated",
            readout="calibrated",
            key_added="pred",
            return_anndata=False,
        ),
    )
    check = state["transfer_check"]
    step("hedge", lambda: sctrvae.tl.hedge(model, adata, check, "cell_type", "pred"))
    step(
        "differential_response",
        lambda: model.differential_response(
            None, "cell_type", "control", "stimulated", check=check
        ),
    )
    step("latent", lambda: model.get_latent_representation())
    return rows


def report(table, out: Path, wall: float) -> None:
    import pandas as pd

    lines = report_header(
        "The trust workflow at 20k, 100k and 200k cells",
        "python benchmarks/workflow_scale.py",
        "its docstring says what runs",
        wall,
    )
    seconds = table.pivot(index="step", columns="cells", values="seconds")
    peaks = table.pivot(index="step", columns="cells", values="peak_rss_mb")
    order = list(dict.fromkeys(table.step))
    seconds, peaks = seconds.loc[order], peaks.loc[order]
    added = (
        (table.peak_rss_mb - table.rss_before_mb)
        .to_frame("added")
        .assign(step=table.step, cells=table.cells)
        .pivot(index="step", columns="cells", values="added")
    )
    sizes = list(seconds.columns)

    def with_growth(frame, unit: str) -> str:
        head = ["step", *(f"{c:,} cells ({unit})" for c in sizes)]
        head += [f"× from {a:,} to {b:,}" for a, b in pairwise(sizes)]
        body = []
        for name, row in frame.iterrows():
            values = [f"{row[c]:,.1f}" if unit == "s" else f"{row[c]:,.0f}" for c in sizes]
            growth = [f"{row[b] / row[a]:.2f}" if row[a] else "–" for a, b in pairwise(sizes)]
            body.append([f"`{name}`", *values, *growth])
        rows = [head, ["---"] * len(head), *body]
        return "\n".join("| " + " | ".join(r) + " |" for r in rows)

    lines += [
        "Wall seconds per step, and how they grow with the cells:",
        "",
        with_growth(seconds, "s"),
        "",
        "Peak resident memory of the process during each step (MiB; the data, the model and "
        "what the step adds), and its growth:",
        "",
        with_growth(peaks, "MiB"),
        "",
        "What each step added to the resident memory it started from (peak − RSS before, MiB):",
        "",
        with_growth(added.loc[order], "MiB"),
        "",
        "The check against the fit, same size: time "
        + ", ".join(
            f"{c:,}: {seconds.loc['transfer_check', c] / seconds.loc['fit', c]:.2f}×" for c in sizes
        )
        + "; peak memory "
        + ", ".join(
            f"{c:,}: {peaks.loc['transfer_check', c] / peaks.loc['fit', c]:.2f}×" for c in sizes
        )
        + " (targets: ≤ 3× and ≤ 1.5×).",
        "",
        "Load average before each step: "
        + ", ".join(f"{v:.1f}" for v in table.load_before)
        + " (2 cores; nothing else ran).",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    pd.DataFrame(table).to_csv(out.with_suffix(".csv"), index=False)
    print("\n".join(lines))


def main() -> None:
    options = parser(__doc__, out=RESULTS / "workflow_scale")
    options.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    options.add_argument("--write-data", type=int, help="internal: write one size's file")
    options.add_argument("--workflow", help="internal: run the workflow on this .h5ad")
    args = options.parse_args()
    if args.write_data:
        data_path(args.write_data)
        return
    if args.workflow:
        print(json.dumps(workflow(args.workflow)))
        return
    import pandas as pd

    start = time.perf_counter()
    rows = []
    for n_cells in args.sizes:
        # written by its own process: simulating must not count in the workflow's memory
        subprocess.run([sys.executable, __file__, "--write-data", str(n_cells)], check=True)
        done = subprocess.run(
            [sys.executable, __file__, "--workflow", str(data_path(n_cells))],
            check=True,
            stdout=subprocess.PIPE,
            text=True,
        )
        rows += json.loads(done.stdout.strip().splitlines()[-1])
    report(pd.DataFrame(rows), args.out, time.perf_counter() - start)


if __name__ == "__main__":
    main()
