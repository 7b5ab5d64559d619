"""Peak memory of one training epoch at 200,000 cells × 2,000 genes, stage by stage.

    python benchmarks/epoch_memory.py     # writes benchmarks/results/epoch_memory.md

The data are those of ``benchmarks/scale.py`` (simulated counts, CSR float32, written once to
``benchmarks/.data-scale`` by a separate process so that simulating them does not count). A
fresh process reads them, runs ``setup_anndata``, builds the default model and trains one epoch
(``max_epochs=1``, the other defaults); after each stage it records the process's resident
memory and its high-water mark (``VmRSS``, ``VmHWM``, MiB), so that a rise is pinned to the
stage that caused it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, parser, report_header

HERE = Path(__file__).resolve().parent
N_CELLS = 200_000


def memory_mb() -> dict[str, float]:
    """This process's ``VmRSS`` and ``VmHWM`` in MiB."""
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":")[0]
        if key in ("VmRSS", "VmHWM"):
            fields[key] = round(int(line.split()[1]) / 1024)
    return fields


def stages(path: str) -> list[dict]:
    """The stages of a first fit, in this process."""
    import anndata as ad
    from _common import quiet

    import sctrvae

    quiet()
    rows = []

    def mark(stage: str, start: float) -> None:
        rows.append(
            {"stage": stage, "seconds": round(time.perf_counter() - start, 1), **memory_mb()}
        )

    start = time.perf_counter()
    adata = ad.read_h5ad(path)
    mark("read_h5ad", start)
    start = time.perf_counter()
    sctrvae.TRVAEModel.setup_anndata(adata, condition_key="condition")
    mark("setup_anndata", start)
    start = time.perf_counter()
    model = sctrvae.TRVAEModel(adata)
    mark("TRVAEModel(adata)", start)
    start = time.perf_counter()
    model.train(max_epochs=1, enable_progress_bar=False)
    mark("train(max_epochs=1)", start)
    return rows


def main() -> None:
    options = parser(__doc__, out=RESULTS / "epoch_memory.md")
    options.add_argument("--stages", help="internal: run the stages on this .h5ad and print them")
    args = options.parse_args()
    if args.stages:
        print(json.dumps(stages(args.stages)))
        return
    sys.path.insert(0, str(HERE))
    import scale

    path, csr_mb = scale.write_data(N_CELLS)
    done = subprocess.run(
        [sys.executable, __file__, "--stages", str(path)],
        check=True,
        capture_output=True,
        text=True,
    )
    rows = json.loads(done.stdout.strip().splitlines()[-1])
    lines = report_header(
        "One epoch at 200,000 cells: peak memory by stage", "python benchmarks/epoch_memory.py"
    )
    lines += [
        f"{N_CELLS:,} cells × {scale.N_GENES:,} genes, CSR float32 "
        f"({csr_mb:.0f} MiB of CSR arrays).",
        "`VmRSS`: resident memory after the stage; `VmHWM`: the process's high-water mark so far.",
        "",
        "| stage | seconds | VmRSS (MiB) | VmHWM (MiB) |",
        "|---|---:|---:|---:|",
        *(f"| `{r['stage']}` | {r['seconds']} | {r['VmRSS']:,} | {r['VmHWM']:,} |" for r in rows),
        "",
    ]
    args.out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
