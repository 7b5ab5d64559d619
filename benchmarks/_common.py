"""What the benchmark scripts share: options, quiet runs, report headers, the Kang file, probes.

Not part of the package. The scripts run as ``python benchmarks/<script>.py``, which puts this
folder first on ``sys.path``, so they import it as ``_common``. Nothing here imports torch or
sctrvae at import time: ``speed.py`` decides, per process, which of the two loads first.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import subprocess
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Where the reports and their CSVs are written by default.
RESULTS = ROOT / "benchmarks" / "results"
#: The variable that names the Kang 2018 file (that of ``sctrvae.datasets.kang2018``).
KANG_PATH_ENV = "SCTRVAE_KANG_PATH"
#: The Kang file when the variable is unset: the shared data folder beside the repository.
KANG_DEFAULT = ROOT.parent / "shared" / "data" / "kang_pbmc_ifnb_1975.h5ad"
#: The Kang folds' arguments of ``sctrvae.benchmark.leave_one_out``: the condition and
#: cell-type columns, the condition predicted from and the one predicted.
KANG_FOLDS = ("condition", "cell_type", "control", "stimulated")
#: Loggers whose per-fit messages would drown a benchmark's progress lines.
TRAINING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric", "scvi")


def kang_path() -> Path:
    """The Kang 2018 file: ``$SCTRVAE_KANG_PATH``, else :data:`KANG_DEFAULT`."""
    return Path(os.environ.get(KANG_PATH_ENV, KANG_DEFAULT))


def parser(
    doc: str, out: Path, seeds: list[int] | None = None, kang: bool = False
) -> argparse.ArgumentParser:
    """An argument parser with the options the scripts share; a script adds its own.

    Parameters
    ----------
    doc
        The script's docstring, shown by ``--help``.
    out
        Default of ``--out``, where the results go (a folder, or a path without suffix).
    seeds
        Default of ``--seeds`` (values of ``scvi.settings.seed``); ``None``: no such option.
    kang
        Add ``--data``, the Kang file (default :func:`kang_path`).
    """
    options = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    options.add_argument("--out", type=Path, default=out, help=f"default: {out}")
    if seeds is not None:
        options.add_argument("--seeds", nargs="+", type=int, default=seeds)
    if kang:
        options.add_argument(
            "--data", type=Path, default=kang_path(), help=f"Kang .h5ad (default: ${KANG_PATH_ENV})"
        )
    return options


def default_fit(train, seed: int, condition_key: str = "condition"):
    """The default model trained on ``train`` with ``scvi.settings.seed = seed``, and the
    seconds ``train()`` took."""
    import time

    import scvi

    import sctrvae

    scvi.settings.seed = seed
    sctrvae.TRVAEModel.setup_anndata(train, condition_key=condition_key)
    model = sctrvae.TRVAEModel(train)
    start = time.perf_counter()
    model.train(enable_progress_bar=False)
    return model, time.perf_counter() - start


def quiet() -> None:
    """Silence warnings and the training loggers: a benchmark's output is its report."""
    warnings.filterwarnings("ignore")
    for name in TRAINING_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def report_header(
    title: str, command: str, see: str = "see `benchmarks/README.md`", wall: float | None = None
) -> list[str]:
    """The first lines of a report: its title, how to regenerate it, and the machine.

    ``wall``: the run's wall time in seconds; with it, a line with the machine, the versions of
    torch and sctrvae, and that time.
    """
    lines = [f"# {title}", "", f"Regenerate: `{command}` ({see}).", ""]
    if wall is not None:
        import torch

        import sctrvae

        lines += [
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, torch "
            f"{torch.__version__}, sctrvae {sctrvae.__version__}{source_commit()}; total wall "
            f"time {wall / 60:.1f} min.",
            "",
        ]
    return lines


def source_commit() -> str:
    """`` (commit abc1234)`` of the checkout that ran, ``+ changes`` if ``src/`` had any; or ``""``.

    An editable install's version is the commit it was installed at, not the one that ran.
    """
    src = Path(__file__).resolve().parent.parent / "src"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=src, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return ""
    return f" (commit {commit}{' + changes' if changed else ''})" if commit else ""


@contextmanager
def output_bias_from_zero() -> Iterator[None]:
    """Models built inside start their output bias at 0, as every model did before it had a start.

    For comparisons with the earlier defaults; see
    :meth:`~sctrvae.TRVAEModule.start_from_profiles` for what a model does otherwise.
    """
    from sctrvae import TRVAEModule

    start = TRVAEModule.start_from_profiles
    TRVAEModule.start_from_profiles = lambda module, gene_means: None
    try:
        yield
    finally:
        TRVAEModule.start_from_profiles = start


def high_water_mb(reset: bool = False) -> float:
    """This process's peak RSS (``VmHWM``) in MiB.

    ``reset``: start it again from now (Linux ``/proc/self/clear_refs``).
    """
    if reset:
        Path("/proc/self/clear_refs").write_text("5")
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class PeakRSS:
    """Context manager sampling this process's resident memory; ``.peak_mb`` after exit."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak_mb = 0.0
        self._stop = threading.Event()

    @staticmethod
    def current_mb() -> float:
        """Resident set size now, in MiB (Linux ``/proc``; 0 where unavailable)."""
        status = Path("/proc/self/status")
        if not status.exists():
            return 0.0
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.current_mb())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self.peak_mb = self.current_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.current_mb())
