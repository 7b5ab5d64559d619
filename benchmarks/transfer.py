"""The trust workflow on held-out groups, run as `docs/transfer.md` tells users to run it.

    python benchmarks/transfer.py                      # every design, seeds 0 1 2
    python benchmarks/transfer.py --designs own --seeds 0

For each design, seed and group ``t``: train the default model without ``t``'s stimulated cells
(``scvi.settings.seed = seed``), predict them from ``t``'s control cells
(``predict(readout="calibrated")``), run ``sctrvae.tl.transfer_check`` at its defaults on the
model's training data, and ``sctrvae.tl.hedge``. Scored on ``t``'s real cells: Δ-Pearson of the
predicted mean change (log-normalised) over ``t``'s top DEGs (50 for patients, 100 for Kang's
cell types) for the model, the hedge, and the mean and median shift; the share of ``t``'s DEGs
and of all its genes whose real change lies in the hedge's 90% interval; the interval's median
width against the "know-nothing" width (2 × 1.645 × the training groups' between-group standard
deviation of the change); the check's verdicts on the training groups; the wall time of the
check against that of the fit.

Designs (``sctrvae.datasets.simulate_patients``: 2,500 cells, 300 genes, 5 patients, data seed
0): ``unlike`` (a look-alike pair that responds unlike), ``own`` (one patient whose response is
its own and that looks like nobody), ``alike`` (the control); ``kang``: Kang's PBMCs, each of the
7 cell types held out (``$SCTRVAE_KANG_PATH`` or ``../shared/data``).

Each (design, seed, group) is stored in ``benchmarks/results/transfer/<design>.csv`` (and the
verdicts in ``<design>_verdicts.csv``) as soon as it is done, with an ``.npz`` of the evidence
the hedge is computed from (a local cache, not committed: 25 MB for Kang); a rerun skips what
is stored.
``--check-repeats N`` and ``--untested record`` run a non-default check and hedge (pass
another ``--out``: the report goes beside it). ``--report`` rewrites
``benchmarks/results/transfer.md`` from the stored rows (the hedge is recomputed from the
stored evidence with the current ``tl.hedged_change_se``). ``--weights``
scores, from the same evidence, every fixed hedging weight ``w`` (0, 0.1, …, 1) on every
(design, seed, group), and writes which weights keep the hedge within 0.05 of the better of
model and median shift: ``benchmarks/results/transfer_weights.md``. ``--timing N``
times the check against one fit, N seeds per design, alone on the machine:
``benchmarks/results/transfer_cost.md``.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from _common import default_fit

import sctrvae
from sctrvae._utils import pearson
from sctrvae.tl import hedged_change_se
from sctrvae.tl._held_out import GroupedData, score_change

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
DEFAULT_KANG = ROOT.parent / "shared" / "data" / "kang_pbmc_ifnb_1975.h5ad"
DESIGNS = ("unlike", "own", "alike", "kang")
CONDITION, SOURCE, TARGET = "condition", "control", "stimulated"
Z90 = 1.645


def load(design: str) -> tuple[ad.AnnData, str, int]:
    """The design's data, its group column and the number of DEGs scored."""
    if design == "kang":
        path = os.environ.get("SCTRVAE_KANG_PATH", DEFAULT_KANG)
        return ad.read_h5ad(path), "cell_type", 100
    return sctrvae.datasets.simulate_patients(pair_response=design, seed=0), "patient", 50


def run_group(data: GroupedData, group: str, t: str, seed: int, check_kwargs: dict, untested: str):
    """The workflow with ``t``'s stimulated cells held out: one row, and the check's verdicts."""
    ((keep, (held,)),) = data.folds([(t,)])
    adata, source = data.adata, held.source_cells
    model, fit_seconds = default_fit(adata[keep].copy(), seed, CONDITION)
    written = adata.copy()
    model.predict(
        written,
        indices=source,
        target_condition=TARGET,
        readout="calibrated",
        key_added="pred",
    )
    start = time.perf_counter()
    check = sctrvae.tl.transfer_check(
        model, group, SOURCE, TARGET, n_degs=data.n_degs, progress=False, **check_kwargs
    )
    check_seconds = time.perf_counter() - start
    sctrvae.tl.hedge(model, written, check, group, "pred", untested=untested)
    record = written.uns["pred_hedged"]

    real, source_mean, degs = held.real_change, held.source_mean, held.deg_mask
    predicted = {
        "model": np.nanmean(written.layers["pred"][source], 0) - source_mean,
        **data.shared([t]),
    }
    deltas = {
        m: score_change(c, real, source_mean, degs)["pearson_delta_deg"]
        for m, c in predicted.items()
    }
    # the held-out group's truth, the predictions and what the check saw, for later analyses
    evidence = {
        "real": real,
        "degs": degs,
        "model": predicted["model"],
        "median_shift": predicted["median_shift"],
        "lending": record["lending"].loc[t].reindex(data.changes.index.drop(t)).to_numpy(),
    }
    for g, c in check.attrs["changes"].items():
        evidence.update({f"{g}/{k}": np.asarray(v, dtype=np.float32) for k, v in c.items()})
    hedged = hedge_scores(evidence)
    package = record["change"].loc[t].to_numpy()
    assert np.isclose(hedged["hedge"], pearson(package[degs], real[degs]), atol=1e-4)
    row = {
        "seed": seed,
        "group": t,
        **deltas,
        **hedged,
        "know_nothing_width": float(
            np.median(2 * Z90 * data.changes.drop(index=t).std(axis=0).to_numpy())
        ),
        "fit_seconds": fit_seconds,
        "check_seconds": check_seconds,
        "refits": check.attrs["refits"],
        "refit_steps": check.attrs["refit_steps"],
    }
    verdicts = (
        check.groupby("group", sort=False)[["margin", "margin_se", "verdict", "reliability"]]
        .first()
        .reset_index()
        .assign(seed=seed, held_out=t)
    )
    return row, verdicts, evidence


def hedge_scores(evidence: dict) -> dict:
    """What ``tl.hedge`` gives the held-out group, recomputed from the stored evidence.

    The hedged change and its 90% interval (``sctrvae.tl.hedged_change_se`` with the stored
    look-alike weights), scored on the group's DEGs: Δ-Pearson, the weight, and the share of
    the DEGs and of all genes whose real change the interval holds, with its median width.
    """
    checked = {}
    for key, value in evidence.items():
        if "/" in key:
            group, part = key.split("/")
            checked.setdefault(group, {})[part] = value
    for c in checked.values():
        c["degs"] = c["degs"].astype(int)
    weight = 1.0 - float(evidence["lending"].sum())
    change, se = hedged_change_se(evidence["model"], evidence["median_shift"], weight, checked)
    real, degs = evidence["real"], evidence["degs"].astype(bool)
    half = Z90 * se
    inside = np.abs(real - change) <= half
    return {
        "hedge": pearson(change[degs], real[degs]),
        "weight": weight,
        "coverage_deg": inside[degs].mean(),
        "coverage_all": inside.mean(),
        "width": float(np.median(2 * half)),
        "width_deg": float(np.median(2 * half[degs])),
    }


def run(
    design: str, seeds: list[int], out: Path, check_kwargs: dict, untested: str = "reliability"
) -> None:
    adata, group, n_degs = load(design)
    data = GroupedData(adata, group, CONDITION, SOURCE, TARGET, n_degs)
    rows_path, verdicts_path = out / f"{design}.csv", out / f"{design}_verdicts.csv"
    rows = pd.read_csv(rows_path) if rows_path.exists() else pd.DataFrame(columns=["seed", "group"])
    verdicts = pd.read_csv(verdicts_path) if verdicts_path.exists() else pd.DataFrame()
    for seed in seeds:
        for t in adata.obs[group].cat.categories.astype(str):
            if ((rows.seed == seed) & (rows.group == t)).any():
                continue
            row, checked, evidence = run_group(data, group, t, seed, check_kwargs, untested)
            np.savez_compressed(out / f"{design}_seed{seed}_{t}.npz", **evidence)
            rows = pd.concat([rows, pd.DataFrame([row])], ignore_index=True)
            verdicts = pd.concat([verdicts, checked], ignore_index=True)
            rows.to_csv(rows_path, index=False)
            verdicts.to_csv(verdicts_path, index=False)
            print(
                f"{design} seed {seed} {t}: model {row['model']:.3f} hedge {row['hedge']:.3f} "
                f"median {row['median_shift']:.3f} coverage {row['coverage_deg']:.2f} "
                f"check/fit {row['check_seconds'] / row['fit_seconds']:.2f}",
                flush=True,
            )


def markdown(df: pd.DataFrame) -> str:
    """A pipe table (``to_markdown`` needs ``tabulate``, which the test extra lacks)."""
    df = df.reset_index()
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.to_numpy()]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def verdict_stability(verdicts: pd.DataFrame) -> tuple[float, float]:
    """Share of (held-out, checked group, seed) verdicts that are undecided or agree with the
    other seeds' decided verdicts; share undecided."""
    decided = verdicts[verdicts.verdict != "undecided"]
    modal = decided.groupby(["held_out", "group"]).verdict.agg(lambda v: v.mode().iloc[0])
    key = list(zip(verdicts.held_out, verdicts.group, strict=True))
    agree = [
        v == "undecided" or v == modal.get(k) for k, v in zip(key, verdicts.verdict, strict=True)
    ]
    return float(np.mean(agree)), float((verdicts.verdict == "undecided").mean())


def report(out: Path, options: str = "") -> str:
    """The report of the runs stored in ``out``; ``options``: those of the run, if not default."""
    run = f"python benchmarks/transfer.py{options}"
    stored = out.relative_to(ROOT) if out.is_absolute() else out
    lines = [
        "# The trust workflow on held-out groups",
        "",
        f"Regenerate: `{run}` (its docstring says what runs); "
        f"`--report` rewrites this page from `{stored}/`.",
        "",
    ]
    for design in DESIGNS:
        path = out / f"{design}.csv"
        if not path.exists():
            continue
        rows = pd.read_csv(path)
        for i, row in rows.iterrows():  # the hedge as the current tl.hedge computes it
            stored = out / f"{design}_seed{row.seed}_{row.group}.npz"
            if stored.exists():  # the evidence is a local cache, not committed
                for key, value in hedge_scores(dict(np.load(stored))).items():
                    rows.loc[i, key] = value
        rows.to_csv(path, index=False)
        verdicts = pd.read_csv(out / f"{design}_verdicts.csv")
        seeds = sorted(rows.seed.unique())
        per_group = rows.groupby("group", sort=False)
        scores = per_group[["model", "hedge", "mean_shift", "median_shift"]].agg(
            lambda x: f"{x.mean():.3f} ± {x.std():.3f}" if len(x) > 1 else f"{x.mean():.3f}"
        )
        means = rows.groupby("seed")[["model", "hedge", "mean_shift", "median_shift"]].mean()
        scores.loc["mean"] = [f"{means[c].mean():.3f} ± {means[c].std():.3f}" for c in means]
        better = rows[["model", "median_shift"]].max(1)
        gap = (rows.hedge - better).groupby(rows.group, sort=False)
        intervals = per_group[
            ["coverage_deg", "coverage_all", "width", "width_deg", "know_nothing_width", "weight"]
        ].agg(lambda x: f"{x.min():.2f}–{x.max():.2f}" if x.nunique() > 1 else f"{x.iloc[0]:.2f}")
        stable, undecided = verdict_stability(verdicts)
        ratio = rows.check_seconds / rows.fit_seconds
        lines += [
            f"## `{design}` (seeds {', '.join(str(s) for s in seeds)})",
            "",
            "Δ-Pearson over the held-out group's DEGs, mean ± sd over seeds:",
            "",
            markdown(scores),
            "",
            "Hedge minus the better of model and median shift, worst seed per group: "
            + ", ".join(f"{g} {v:+.3f}" for g, v in gap.min().items())
            + f"; on average {rows.hedge.mean() - rows.model.mean():+.4f} against the model.",
            "",
            "90% intervals of the hedged change (range over seeds): coverage of the group's DEGs "
            "and of all its genes, median width over all genes and over the DEGs, the "
            "know-nothing width, and the hedging weight:",
            "",
            markdown(intervals),
            "",
            "Coverage of the DEGs averaged over groups, per seed: "
            + ", ".join(f"{v:.3f}" for v in rows.groupby("seed").coverage_deg.mean())
            + f"; lowest (group, seed): {rows.coverage_deg.min():.2f}.",
            "",
            f"Verdicts on the checked groups ({len(verdicts)} (held-out, checked, seed) "
            f"triples): {stable:.0%} undecided or the same as on the other seeds; "
            f"{undecided:.0%} undecided.",
            "",
            f"Cost in this run (not a timing run, other jobs may have run beside it; alone, see "
            f"`transfer_cost.md`): the check took {ratio.median():.2f}× the fit's wall time "
            f"(median; {ratio.min():.2f}–{ratio.max():.2f}), {int(rows.refits.iloc[0])} refits "
            f"of {int(rows.refit_steps.median())} steps (median).",
            "",
        ]
    return "\n".join(lines)


WEIGHTS = np.round(np.linspace(0.0, 1.0, 11), 1)


def weight_scan(out: Path, path: Path) -> None:
    """Δ-Pearson of ``median + w · (model − median)`` for fixed ``w``, from the stored evidence.

    Per (design, seed, group): the weights whose hedge is within 0.05 of the better of model and
    median shift. A design pair that no single weight serves is one the hedge can only serve
    if the check's evidence tells the two apart.
    """
    rows = []
    for design in DESIGNS:
        for stored in sorted(out.glob(f"{design}_seed*_*.npz")):
            seed, group = stored.stem.removeprefix(f"{design}_seed").split("_", 1)
            e = dict(np.load(stored))
            degs, real = e["degs"].astype(bool), e["real"]
            scores = [
                pearson(
                    (e["median_shift"] + w * (e["model"] - e["median_shift"]))[degs], real[degs]
                )
                for w in WEIGHTS
            ]
            better = max(scores[0], scores[-1])
            good = WEIGHTS[np.asarray(scores) >= better - 0.05]
            rows.append(
                {
                    "design": design,
                    "seed": int(seed),
                    "group": group,
                    **{f"w={w}": round(x, 3) for w, x in zip(WEIGHTS, scores, strict=True)},
                    "weights_within_0.05": f"{good.min()}–{good.max()}" if good.size else "none",
                    "hedge_weight": round(1.0 - float(e["lending"].sum()), 2),
                }
            )
    table = pd.DataFrame(rows)
    pair = table[
        table.group.isin(["patient_3", "patient_4"]) & table.design.isin(["unlike", "alike"])
    ]
    lines = [
        "# Which fixed hedging weights serve each held-out group",
        "",
        "Regenerate: `python benchmarks/transfer.py --weights` (from the evidence cached by a run "
        "of `benchmarks/transfer.py`). Δ-Pearson over the held-out group's DEGs of "
        "`median_shift + w · (model − median_shift)`; `weights_within_0.05`: the weights whose "
        "score is within 0.05 of the better of `w = 0` (median shift) and `w = 1` (model); "
        "`hedge_weight`: the weight `tl.hedge` chose.",
        "",
        "## The look-alike pair, `unlike` against `alike`",
        "",
        markdown(pair.set_index(["design", "seed", "group"])),
        "",
        "## Every group",
        "",
        markdown(table.set_index(["design", "seed", "group"])),
        "",
    ]
    path.write_text("\n".join(lines))
    print("\n".join(lines[:12]))


def timing(designs: list[str], repeats: int, path: Path) -> None:
    """Wall time of ``train()`` and of ``tl.transfer_check`` on the same model, alone.

    One group held out per design (the first), ``repeats`` fits with seeds 0, 1, ...: the
    check's cost as a ratio to the fit measured in the same run, with the load average.
    """
    rows = []
    for design in designs:
        adata, group, n_degs = load(design)
        data = GroupedData(adata, group, CONDITION, SOURCE, TARGET, n_degs)
        ((keep, _),) = data.folds([(data.groups[0],)])
        for seed in range(repeats):
            train = adata[keep].copy()
            scvi.settings.seed = seed
            load_before = os.getloadavg()[0]
            start = time.perf_counter()
            sctrvae.TRVAEModel.setup_anndata(train, condition_key=CONDITION)
            model = sctrvae.TRVAEModel(train)
            model.train(enable_progress_bar=False)
            fit = time.perf_counter() - start
            start = time.perf_counter()
            check = sctrvae.tl.transfer_check(
                model, group, SOURCE, TARGET, n_degs=n_degs, progress=False
            )
            seconds = time.perf_counter() - start
            rows.append(
                {
                    "design": design,
                    "seed": seed,
                    "cells": train.n_obs,
                    "fit_s": round(fit, 1),
                    "check_s": round(seconds, 1),
                    "ratio": round(seconds / fit, 2),
                    "refits": check.attrs["refits"],
                    "refit_steps": check.attrs["refit_steps"],
                    "load_before": load_before,
                    "load_after": os.getloadavg()[0],
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    path.write_text(
        "\n".join(
            [
                "# The transfer check's cost against one fit",
                "",
                "Regenerate: `python benchmarks/transfer.py --timing` (nothing else running).",
                "",
                "`fit_s`: `setup_anndata` + `TRVAEModel` + `train()` at the defaults; `check_s`:"
                " `tl.transfer_check` at its defaults on that model; load averages before the"
                " fit and after the check (2 cores).",
                "",
                markdown(table.set_index("design")),
                "",
                f"Median ratio: {table.ratio.median():.2f} (range {table.ratio.min():.2f}–"
                f"{table.ratio.max():.2f}).",
                "",
            ]
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--designs", nargs="*", default=list(DESIGNS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=OUT / "transfer", type=Path)
    parser.add_argument("--report", action="store_true", help="only rewrite the report")
    parser.add_argument("--weights", action="store_true", help="only scan fixed weights")
    parser.add_argument(
        "--timing", type=int, metavar="REPEATS", help="time the check against a fit instead"
    )
    parser.add_argument("--check-repeats", type=int, help="the check's n_repeats (default its)")
    parser.add_argument(
        "--untested", default="reliability", choices=["reliability", "record"], help="tl.hedge's"
    )
    args = parser.parse_args()
    check_kwargs = {} if args.check_repeats is None else {"n_repeats": args.check_repeats}
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.weights:
        weight_scan(args.out, args.out.parent / "transfer_weights.md")
        return
    if args.timing:
        timing(args.designs, args.timing, args.out.parent / "transfer_cost.md")
        return
    if not args.report:
        for design in args.designs:
            run(design, args.seeds, args.out, check_kwargs, args.untested)
    options = "" if args.check_repeats is None else f" --check-repeats {args.check_repeats}"
    options += "" if args.untested == "reliability" else f" --untested {args.untested}"
    options += "" if args.out == OUT / "transfer" else f" --out {args.out}"
    (args.out.parent / "transfer.md").write_text(report(args.out, options))


if __name__ == "__main__":
    main()
