"""Training throughput and peak memory of sctrvae against scArches' TRVAE, 10k to 1M cells.

    nice -n 19 python benchmarks/scale.py                    # all sizes, both tools
    python benchmarks/scale.py --sizes 10000 100000 --skip-scarches

Writes results/scale.csv, results/scale.md and results/scale.png. Every measurement runs in a
fresh subprocess, so that its peak RSS (``VmHWM``: loading the data included) is its own.
sctrvae runs from this interpreter; scArches from a virtual environment with its old pins,
created at benchmarks/.venv-scarches on first use. The data go from one to the other through an
.h5ad file per size, written once (kept in benchmarks/.data-scale, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import RESULTS, parser, report_header

HERE = Path(__file__).resolve().parent
DATA = HERE / ".data-scale"
SCARCHES_VENV = HERE / ".venv-scarches"
SCARCHES_PINS = [
    "scarches==0.6.1",
    "anndata==0.10.8",
    "scvi-tools==1.1.6.post2",
    "jax==0.4.29",
    "jaxlib==0.4.29",
    "flax==0.8.4",
    "optax==0.2.2",
    "orbax-checkpoint==0.5.16",
    "chex==0.1.86",
    "numpyro==0.15.0",
    "numpy<2",
]
TORCH = "torch==2.13.0"
#: Cells simulated once; larger sizes stack shuffled copies of them (see ``write_data``).
BASE_CELLS = 25_000
N_GENES = 2_000
#: The architecture of both tools (sctrvae's defaults).
ARCHITECTURE = {"n_hidden": 128, "n_layers": 2, "n_latent": 10, "dropout": 0.1}


def write_data(n_cells: int, seed: int = 0) -> tuple[Path, float]:
    """The .h5ad of ``n_cells`` × 2,000 simulated counts (CSR), and its CSR size in MiB.

    Up to :data:`BASE_CELLS` cells are simulated directly; above, the base cells are stacked
    and shuffled (simulating a million cells takes ~20 minutes on 2 cores; duplicated cells do
    not change the cost of training). Written without compression and with ``uns`` dropped,
    so that anndata 0.10 reads it.
    """
    import anndata as ad
    import scipy.sparse as sp

    import sctrvae

    path = DATA / f"sim_{n_cells}x{N_GENES}.h5ad"
    if not path.exists():
        DATA.mkdir(exist_ok=True)
        base = sctrvae.datasets.simulate(
            n_cells=min(n_cells, BASE_CELLS), n_genes=N_GENES, chunk_size=10_000, seed=seed
        )
        del base.uns["simulation"]
        if n_cells > base.n_obs:
            rng = np.random.default_rng(seed)
            rows = rng.permutation(np.resize(np.arange(base.n_obs), n_cells))
            x = sp.vstack([base.X] * -(-n_cells // base.n_obs), format="csr")[rows]
            obs = base.obs.iloc[rows % base.n_obs].reset_index(drop=True)
            obs.index = [f"cell_{i}" for i in range(n_cells)]
            base = ad.AnnData(X=x, obs=obs, var=base.var)
        base.write_h5ad(path)
    import h5py

    with h5py.File(path, "r") as f:
        mib = sum(f["X"][k].size * f["X"][k].dtype.itemsize for k in ("data", "indices", "indptr"))
    return path, mib / 2**20


def ensure_scarches_venv() -> Path:
    """The scArches interpreter, installing its environment on first use."""
    python = SCARCHES_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SCARCHES_VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q"]
        # torch first and pinned: unpinned, the resolver would pull the CUDA wheels
        subprocess.run([*pip, TORCH], check=True)
        subprocess.run([*pip, *SCARCHES_PINS], check=True)
    return python


def run_sctrvae(args: argparse.Namespace) -> dict:
    """One sctrvae measurement in this process (called in a subprocess by ``measure``)."""
    import anndata as ad
    import lightning.pytorch as pl
    import scvi
    import torch

    from sctrvae import TRVAEModel

    torch.set_num_threads(args.threads)
    cuda = torch.cuda.is_available()
    spans: list[float] = []
    cells = [0]

    class EpochTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            cells[0] += batch["X"].shape[0]

        def on_train_epoch_start(self, trainer, pl_module):
            if cuda:
                torch.cuda.synchronize()
            spans.append(-time.perf_counter())

        def on_train_epoch_end(self, trainer, pl_module):
            if cuda:
                torch.cuda.synchronize()
            spans[-1] += time.perf_counter()

    load = os.getloadavg()[0]
    adata = ad.read_h5ad(args.run_sctrvae, backed="r" if args.path == "backed" else None)
    scvi.settings.seed = 0
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    arch = ARCHITECTURE
    model = TRVAEModel(
        adata,
        n_hidden=arch["n_hidden"],
        n_layers=arch["n_layers"],
        n_latent=arch["n_latent"],
        dropout_rate=arch["dropout"],
    )
    model.train(
        max_epochs=args.epochs,
        batch_size=args.batch_size,
        train_size=1.0,  # no validation pass: the timed span is the training loop only
        early_stopping=False,
        accelerator="gpu" if cuda else "cpu",
        devices=1,
        enable_progress_bar=False,
        enable_checkpointing=False,
        callbacks=[EpochTimer()],
        limit_train_batches=args.max_batches,
        datasplitter_kwargs={"device_resident": args.path == "device-resident"},
    )
    import sctrvae

    return {
        "tool": "sctrvae",
        "path": args.path,
        "epochs": args.epochs,
        "cells_timed_per_epoch": cells[0] // args.epochs,
        "full_epoch_timed": cells[0] // args.epochs >= adata.n_obs,
        "cells_per_s": cells[0] / float(np.sum(spans)),
        "peak_rss_mb": peak_rss_mb(),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "load_avg": load,
        "tool_version": sctrvae.__version__,
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; unlike ``ru_maxrss``, it is not
    inherited from the parent across ``exec``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def measure(command: list[str]) -> dict:
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(rows, batch_size: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    df = pd.DataFrame(rows)
    df["seconds_per_epoch"] = df["n_cells"] / df["cells_per_s"]
    reference = df[df["tool"] == "scArches TRVAE"].set_index("n_cells")["seconds_per_epoch"]
    df["ratio_to_scarches"] = df["seconds_per_epoch"] / df["n_cells"].map(reference)
    df["rss_target_mb"] = 1.5 * df["csr_mb"] + 1024
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "scale.csv", index=False)

    fig, ax = plt.subplots(figsize=(5, 4))
    for (tool, path), part in df.groupby(["tool", "path"]):
        ax.plot(part["n_cells"], part["seconds_per_epoch"], "o-", label=f"{tool} ({path})")
    ax.set(xscale="log", yscale="log", xlabel="cells", ylabel="seconds per epoch")
    ax.set_title(f"{N_GENES} genes, batch size {batch_size}, {df['device'].iloc[0]}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "scale.png", dpi=120)

    table = df.assign(
        cells_per_s=df["cells_per_s"].round(0).astype(int),
        seconds_per_epoch=df["seconds_per_epoch"].round(1),
        peak_rss_mb=df["peak_rss_mb"].round(0).astype(int),
        csr_mb=df["csr_mb"].round(0).astype(int),
        ratio_to_scarches=df["ratio_to_scarches"].round(2),
        load_avg=df["load_avg"].round(1),
        timed=np.where(
            df["full_epoch_timed"],
            "full epochs",
            df["cells_timed_per_epoch"].map("{:,} cells".format),
        ),
    )[
        [
            "tool",
            "path",
            "n_cells",
            "device",
            "seconds_per_epoch",
            "cells_per_s",
            "peak_rss_mb",
            "csr_mb",
            "ratio_to_scarches",
            "timed",
            "load_avg",
        ]
    ]
    first = df.iloc[0]
    lines = [
        *report_header(
            "Scale: training throughput and memory",
            "nice -n 19 python benchmarks/scale.py",
            see="see `benchmarks/README.md`, Scale",
        ),
        f"Simulated counts (`sctrvae.datasets.simulate`), {N_GENES} genes, 2 conditions, CSR "
        f"float32; {BASE_CELLS:,} cells are simulated and larger sizes stack shuffled copies of "
        f"them (about {int(first['csr_mb'] * 2**20 / 8 / first['n_cells'])} stored values per "
        f"cell). Architecture of both tools: {ARCHITECTURE['n_layers']} hidden layers of "
        f"{ARCHITECTURE['n_hidden']}, latent {ARCHITECTURE['n_latent']}, dropout "
        f"{ARCHITECTURE['dropout']}, NB likelihood, MMD on the first decoder layer; batch size "
        f"{batch_size}; torch threads: {int(first['threads'])}; torch {first['torch']}. "
        "Seconds per epoch = cells / (cells per second of the timed training loop), so an "
        "epoch means one pass over all cells for both tools; validation is not timed. `timed`: "
        "full epochs, or the cells of the minibatches timed in each epoch (the same cap, "
        "`--max-batches`, for both tools; 2 epochs up to 100k cells, 1 above). Peak RSS "
        "is the whole process (imports and reading the .h5ad included), in MiB. `load_avg`: "
        "the machine's 1-minute load average when the measurement started (other jobs ran on "
        "it).",
        "",
        table.to_markdown(index=False),
        "",
        "## Against the targets",
        "",
        *targets(df),
        "",
    ]
    (out / "scale.md").write_text("\n".join(lines))


def targets(df) -> list[str]:
    """One line per target of the scale benchmark, with the measured figures."""
    ours = df[df["tool"] == "sctrvae"]
    lines = []
    cpu = ours[(ours["device"] == "cpu") & ours["ratio_to_scarches"].notna()]
    if cpu.empty:
        lines.append("- CPU epoch time ≤ 0.5 × scArches TRVAE: not measured (no scArches rows).")
    for n_cells, part in cpu.groupby("n_cells"):
        ratios = ", ".join(
            f"{p} {r:.2f}" for p, r in zip(part["path"], part["ratio_to_scarches"], strict=True)
        )
        met = "met" if part["ratio_to_scarches"].min() <= 0.5 else "missed"
        lines.append(
            f"- CPU epoch time ≤ 0.5 × scArches TRVAE at {n_cells:,} cells: {met} "
            f"(sctrvae / scArches: {ratios})."
        )
    big = ours[(ours["n_cells"] >= 1_000_000) & (ours["device"] == "cpu")]
    for _, row in big.iterrows():
        met = "met" if row["peak_rss_mb"] <= row["rss_target_mb"] else "missed"
        lines.append(
            f"- Peak RSS at {row['n_cells']:,} cells ≤ 1.5 × CSR + 1 GiB "
            f"({row['rss_target_mb']:,.0f} MiB), {row['path']}: {met} "
            f"({row['peak_rss_mb']:,.0f} MiB)."
        )
    gpu = ours[(ours["device"] != "cpu") & (ours["n_cells"] >= 1_000_000)]
    if gpu.empty:
        lines.append("- GPU epoch over 1M cells ≤ 10 s: not measured, no GPU here.")
    for _, row in gpu.iterrows():
        met = "met" if row["seconds_per_epoch"] <= 10 else "missed"
        lines.append(
            f"- GPU epoch over {row['n_cells']:,} cells ≤ 10 s ({row['device']}, {row['path']}): "
            f"{met} ({row['seconds_per_epoch']:.1f} s)."
        )
    return lines


def main() -> None:
    options = parser(__doc__, out=RESULTS)
    options.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    options.add_argument("--batch-size", type=int, default=1024)
    options.add_argument("--epochs", type=int, default=2, help="per run; 1 above 100k cells")
    options.add_argument("--threads", type=int, default=os.cpu_count())
    options.add_argument("--skip-scarches", action="store_true")
    options.add_argument(
        "--max-batches",
        type=int,
        default=25,
        help="minibatches timed per epoch, for both tools (all when the epoch is shorter)",
    )
    options.add_argument(
        "--backed-max-cells", type=int, default=100_000, help="largest size run from disk"
    )
    options.add_argument("--run-sctrvae", help=argparse.SUPPRESS)  # worker mode: an .h5ad
    options.add_argument("--path", help=argparse.SUPPRESS)
    options.add_argument(
        "--report-only", action="store_true", help="rewrite scale.md / .png from scale.csv"
    )
    args = options.parse_args()
    if args.report_only:
        import pandas as pd

        rows = pd.read_csv(args.out / "scale.csv")
        report(rows.to_dict("records"), int(rows["batch_size"].iloc[0]), args.out)
        return
    if args.run_sctrvae:
        print(json.dumps(run_sctrvae(args)))
        return

    scarches = None if args.skip_scarches else ensure_scarches_venv()
    rows = []
    for n_cells in args.sizes:
        h5ad, csr_mb = write_data(n_cells)
        epochs = args.epochs if n_cells <= 100_000 else 1
        common = ["--epochs", str(epochs), "--batch-size", str(args.batch_size)]
        common += ["--threads", str(args.threads)]
        runs = []
        paths = ["in-memory", "device-resident"]
        if n_cells <= args.backed_max_cells:
            paths.append("backed")
        for path in paths:
            runs.append([sys.executable, __file__, "--run-sctrvae", str(h5ad), "--path", path])
            runs[-1] += [*common, "--max-batches", str(args.max_batches)]
        if scarches is not None:
            arch = [f"--{k.replace('_', '-')}={v}" for k, v in ARCHITECTURE.items()]
            worker = HERE / "scale_scarches_worker.py"
            runs.append([str(scarches), str(worker), str(h5ad), *common, *arch])
            runs[-1] += ["--max-batches", str(args.max_batches)]
        for command in runs:
            row = {"n_cells": n_cells, "n_genes": N_GENES, "csr_mb": csr_mb}
            row.update(measure(command))
            row["batch_size"] = args.batch_size
            print(json.dumps(row), flush=True)
            rows.append(row)
        report(rows, args.batch_size, args.out)


if __name__ == "__main__":
    main()
