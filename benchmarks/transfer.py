"""Transfer to held-out patients: the model, the shared response and hedged predictions.

    python benchmarks/transfer.py          # writes benchmarks/results/transfer.{csv,md}
    python benchmarks/transfer.py --designs unlike --seeds 0

Designs (:func:`sctrvae.datasets.simulate_patients`, 2,500 cells, 300 genes, 5 patients, data
seed 0): ``unlike``, where the two patients most alike at baseline respond least alike (the
failure of a model that lends cells the response of look-alike cells), and ``alike``, its
control, identical except that the pair responds alike through the map every patient follows.

Each patient ``t`` is held out in turn: train without its stimulated cells, predict them from its
control cells, score the predicted mean change (log-normalised) against the real one over ``t``'s
top-50 DEGs (``pearson_delta_deg``) and the mean expression there (``r2_mean_deg``). Methods:

- ``model``: the default model, calibrated readout (5 draws per cell);
- ``mean_shift`` / ``median_shift``: control + mean / gene-wise median of the others' changes;
- ``nearest_shift``: control + the change of the patient closest at baseline;
- ``hedge``: what ``sctrvae.tl.hedge`` does: ``median shift + w · (model − median shift)``.
  ``w`` for target ``t`` comes from the transfer check inside the training data (every other
  patient ``g`` left out in turn, ``t``'s stimulated cells absent as well, as in
  ``sctrvae.tl.transfer_check`` on the model that predicts ``t``): ``reliability_g`` = 1 if the
  refit beat the mean shift on ``g`` by 0.1 Δ-Pearson (over ``g``'s DEGs) or more, 0 if it lost
  by 0.1 or more, linear in between; ``w`` is their
  average weighted by ``g``'s share among the 30 nearest neighbours (in the model's ``z``) of
  ``t``'s control cells among the other patients' control cells. Its 90% interval per gene
  (``sctrvae.tl.change_se``) is scored by ``coverage90_deg`` / ``coverage90_all``: the fraction
  of ``t``'s DEGs / of all genes whose real change it covers;
- variants of the rule (``hedge_<variant>``): ``uniform`` (donors averaged uniformly, not by
  neighbours), ``mean_base`` (toward the mean shift), ``binary`` (reliability 1 if the refit beat
  the mean shift at all, else 0), ``beats_best`` (as ``binary``, but the refit must beat both
  the mean and the median shift), ``share`` (reliability = the
  share of ``g``'s own response beyond the mean shift that the refit predicted, ⟨D_real,
  D_model⟩ / ‖D_real‖², clipped to [0, 1]; toward the mean shift), ``shrink`` (least-squares
  shrinkage ⟨D_real, D_model⟩ / ‖D_model‖², clipped; toward the mean shift), ``half``
  (``w = 0.5``);
  ``oracle``: the best ``w`` in hindsight, toward the median shift (a ceiling, not a method).

Every fit's predicted changes and neighbour shares are stored in
``benchmarks/results/transfer_fits/<design>_seed<seed>.npz`` as soon as the fit is done; a rerun
skips those fits and recomputes every row (cheap) from them, appending the new (design, seed)
rows to the CSV.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd
import scvi

import sctrvae
from sctrvae.metrics import top_degs
from sctrvae.tl import change_se, donor_shares
from sctrvae.tl._transfer_check import (
    donor_reliability,
    predicted_change,
    refit_like,
    score_change,
    shared_changes,
)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
DESIGNS = {
    "unlike": {"pair_response": "unlike", "seed": 0},
    "alike": {"pair_response": "alike", "seed": 0},
}
GROUP, CONDITION, SOURCE, TARGET = "patient", "condition", "control", "stimulated"
N_DEGS, N_NEIGHBOURS, N_SAMPLES = 50, 30, 5
#: Keyword arguments of every fit's ``train()`` (the default budget).
TRAIN_KWARGS: dict = {}


class Design:
    """A simulated design with each patient's real means, changes and DEGs."""

    def __init__(self, name: str):
        self.name = name
        self.adata = sctrvae.datasets.simulate_patients(**DESIGNS[name])
        self.groups = list(self.adata.obs[GROUP].cat.categories)
        self.baseline, self.changes = sctrvae.tl.group_changes(
            self.adata, GROUP, CONDITION, SOURCE, TARGET
        )
        labels = self.adata.obs[GROUP].to_numpy()
        condition = self.adata.obs[CONDITION].to_numpy()
        self.source = {g: (labels == g) & (condition == SOURCE) for g in self.groups}
        self.target = {g: (labels == g) & (condition == TARGET) for g in self.groups}
        self.degs = {
            g: self.adata.var_names.isin(
                top_degs(self.adata[self.target[g]], self.adata[self.source[g]], N_DEGS)
            )
            for g in self.groups
        }


def fit(design: Design, held_out: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    """Train without the held-out groups' stimulated cells; their predicted changes (+ shares)."""
    adata = design.adata
    keep = ~np.any([design.target[g] for g in held_out], axis=0)
    scvi.settings.seed = seed
    template = _template(adata)
    model = refit_like(template, adata[keep].copy(), **TRAIN_KWARGS)
    out = {
        f"{g}:change": predicted_change(
            model, adata[design.source[g]].copy(), TARGET, "calibrated", N_SAMPLES
        )
        for g in held_out
    }
    if len(held_out) == 1:  # the outer fit: whom the target's cells look like, in z
        (t,) = held_out
        is_source = np.any([design.source[g] for g in design.groups], axis=0)
        z = model.get_latent_representation(adata[is_source].copy())
        labels = adata.obs[GROUP].to_numpy()[is_source]
        others = labels != t
        shares = donor_shares(z[labels == t], z[others], labels[others], N_NEIGHBOURS)
        out[f"{t}:shares"] = shares.reindex(design.groups, fill_value=0.0).to_numpy()
    return out


def _template(adata):
    """An untrained default model whose registry and init parameters the refits copy."""
    template_data = adata[:50].copy()
    sctrvae.TRVAEModel.setup_anndata(template_data, condition_key=CONDITION)
    return sctrvae.TRVAEModel(template_data)


def run_fits(design: Design, seed: int, cache: Path) -> dict[str, np.ndarray]:
    stored = dict(np.load(cache)) if cache.exists() else {}
    keys = [(g,) for g in design.groups] + list(combinations(design.groups, 2))
    for held_out in keys:
        name = "+".join(held_out)
        if any(k.startswith(name + "/") for k in stored):
            continue
        start = time.perf_counter()
        for key, value in fit(design, held_out, seed).items():
            stored[f"{name}/{key}"] = value
        np.savez(cache, **stored)
        print(
            f"{design.name} seed {seed} fit {name}: {time.perf_counter() - start:.0f} s", flush=True
        )
    return stored


def inner_evidence(design: Design, fits: dict[str, np.ndarray], t: str) -> pd.DataFrame:
    """Per training group g of target t: g's transfer check, t's stimulated cells absent."""
    rows = []
    for g in design.groups:
        if g == t:
            continue
        pair = "+".join(sorted((t, g), key=design.groups.index))
        model_change = fits[f"{pair}/{g}:change"]
        real = design.changes.loc[g].to_numpy()
        shared = shared_changes(design.changes.drop(index=[t, g]))
        mask = design.degs[g]
        source_mean = design.baseline.loc[g].to_numpy()
        scores = {
            m: score_change(c, real, source_mean, mask)["pearson_delta_deg"]
            for m, c in {"model": model_change, **shared}.items()
        }
        d_real = (real - shared["mean_shift"])[mask]
        d_pred = (model_change - shared["mean_shift"])[mask]
        rows.append(
            {
                "group": g,
                "reliability": donor_reliability(scores),
                "binary": float(scores["model"] > scores["mean_shift"]),
                "beats_best": float(
                    scores["model"] > max(scores["mean_shift"], scores["median_shift"])
                ),
                "share": float(np.clip(d_real @ d_pred / max(d_real @ d_real, 1e-12), 0, 1)),
                "shrink": float(np.clip(d_real @ d_pred / max(d_pred @ d_pred, 1e-12), 0, 1)),
                "changes": {"real": real, "model": model_change, **shared},
            }
        )
    return pd.DataFrame(rows).set_index("group")


#: Hedging rules: (reliability column, neighbour-weighted, shared response hedged toward).
RULES = {
    "hedge": ("reliability", True, "median_shift"),
    "hedge_uniform": ("reliability", False, "median_shift"),
    "hedge_mean_base": ("reliability", True, "mean_shift"),
    "hedge_binary": ("binary", True, "median_shift"),
    "hedge_beats_best": ("beats_best", True, "median_shift"),
    "hedge_share": ("share", True, "mean_shift"),
    "hedge_shrink": ("shrink", True, "mean_shift"),
}


def rows_for(design: Design, seed: int, fits: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for t in design.groups:
        real = design.changes.loc[t].to_numpy()
        source_mean = design.baseline.loc[t].to_numpy()
        mask = design.degs[t]
        shared = shared_changes(design.changes.drop(index=t))
        distance = ((design.baseline.drop(index=t) - source_mean) ** 2).sum(1)
        model = fits[f"{t}/{t}:change"]
        shares = pd.Series(fits[f"{t}/{t}:shares"], index=design.groups).drop(index=t)
        evidence = inner_evidence(design, fits, t)
        predictions = {
            "model": (model, np.nan, None),
            **{m: (c, np.nan, None) for m, c in shared.items()},
            "nearest_shift": (design.changes.loc[distance.idxmin()].to_numpy(), np.nan, None),
        }
        for name, (column, by_neighbours, base_name) in RULES.items():
            donors = shares if by_neighbours else pd.Series(1 / len(shares), index=shares.index)
            w = float(evidence[column] @ donors[evidence.index])
            base = shared[base_name]
            residuals = np.array(
                [
                    c["real"] - c[base_name] - w * (c["model"] - c[base_name])
                    for c in evidence["changes"]
                ]
            )
            predictions[name] = (base + w * (model - base), w, change_se(residuals))
        base = shared["median_shift"]
        predictions["hedge_half"] = (base + 0.5 * (model - base), 0.5, None)
        grid = np.linspace(0, 1, 21)
        oracle = [score_change(base + w * (model - base), real, source_mean, mask) for w in grid]
        w = grid[int(np.argmax([s["pearson_delta_deg"] for s in oracle]))]
        predictions["oracle"] = (base + w * (model - base), w, None)
        for method, (change, w, se) in predictions.items():
            covered = None if se is None else np.abs(real - change) <= 1.645 * se
            rows.append(
                {
                    "design": design.name,
                    "seed": seed,
                    "group": t,
                    "method": method,
                    **score_change(change, real, source_mean, mask),
                    "weight": w,
                    "coverage90_deg": np.nan if covered is None else covered[mask].mean(),
                    "coverage90_all": np.nan if covered is None else covered.mean(),
                }
            )
    return pd.DataFrame(rows)


def summary(df: pd.DataFrame, score: str = "pearson_delta_deg") -> pd.DataFrame:
    """Per design and method: each group's mean ± sd over seeds, and the mean over groups."""
    per_group = df.groupby(["design", "method", "group"], sort=False)[score]
    mean, sd = per_group.mean(), per_group.std()
    cells = [
        f"{m:.3f}" + ("" if np.isnan(s) else f" ± {s:.3f}") for m, s in zip(mean, sd, strict=True)
    ]
    table = pd.Series(cells, index=mean.index).unstack("group")
    overall = df.groupby(["design", "method", "seed"], sort=False)[score].mean()
    table["mean"] = [
        f"{overall.loc[d, m].mean():.3f} ± {overall.loc[d, m].std():.3f}" for d, m in table.index
    ]
    order = {m: i for i, m in enumerate(df.method.unique())}
    table = table.reset_index()
    return table.iloc[np.lexsort([table.method.map(order), table.design])].reset_index(drop=True)


def criterion(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: each patient's score minus the better of model and median shift, and means."""
    scores = df.groupby(["method", "group"], sort=False).pearson_delta_deg.mean().unstack()
    better = scores.loc[["model", "median_shift"]].max(0)
    out = (scores - better).round(3)
    out["worst"] = out.min(1)
    out["mean"] = scores.mean(1).round(3)
    return out


def markdown(df: pd.DataFrame, index: bool = False) -> str:
    """A pipe table (``to_markdown`` needs ``tabulate``, which the test extra lacks)."""
    df = df.reset_index() if index else df
    cells = [[str(c) for c in df.columns]] + [[str(v) for v in row] for row in df.to_numpy()]
    lines = ["| " + " | ".join(row) + " |" for row in cells]
    lines.insert(1, "|" + "|".join("---" for _ in df.columns) + "|")
    return "\n".join(lines)


def write_report(df: pd.DataFrame, designs: dict[str, Design], path: Path) -> None:
    seeds = ", ".join(str(s) for s in sorted(df.seed.unique()))
    for name in df.design.unique():
        designs.setdefault(name, Design(name))
    lines = [
        "# Transfer to held-out patients: model, shared response, hedging",
        "",
        "Regenerate: `python benchmarks/transfer.py` (its docstring describes designs and "
        "methods).",
        "",
        "Pearson r of predicted vs real mean change (log-normalised) over the held-out patient's "
        f"top-{N_DEGS} DEGs; mean ± sd over training seeds {seeds} per "
        "held-out patient; `mean`: mean over patients, ± sd of that mean over seeds.",
        "",
    ]
    for name in df.design.unique():
        design = designs[name]
        sim = sctrvae.tl.group_similarity(design.adata, GROUP, CONDITION, SOURCE, TARGET)
        pair = design.adata.uns["simulation"]["pair"]
        is_pair = [{a, b} == set(pair) for a, b in zip(sim.group_a, sim.group_b, strict=True)]
        pair_row = sim[is_pair].iloc[0]
        rest = sim[~np.array(is_pair)]
        lines += [
            f"## Design `{name}`",
            "",
            f"Structure measured from the counts: the pair {pair[0]} / {pair[1]} is "
            f"{'the closest' if is_pair[0] else 'NOT the closest'} at baseline (distance "
            f"{pair_row.baseline_distance:.1f}; other pairs {rest.baseline_distance.min():.1f}–"
            f"{rest.baseline_distance.max():.1f}); its response correlation is "
            f"{pair_row.response_correlation:.2f} (other pairs "
            f"{rest.response_correlation.min():.2f}–{rest.response_correlation.max():.2f}).",
            "",
            summary(df[df.design == name]).drop(columns="design").pipe(markdown),
            "",
            "R² of mean expression over the DEGs:",
            "",
            summary(df[df.design == name], "r2_mean_deg").drop(columns="design").pipe(markdown),
            "",
            "Against the better of the model and the shared response (median shift), per "
            "held-out patient (means over seeds):",
            "",
            criterion(df[df.design == name]).pipe(markdown, index=True),
            "",
            "Coverage of the real change by the 90% intervals of `hedge` (fraction of genes; "
            "mean over seeds):",
            "",
            df[(df.design == name) & (df.method == "hedge")]
            .groupby("group")[["coverage90_deg", "coverage90_all"]]
            .mean()
            .T.round(2)
            .assign(mean=lambda x: x.mean(1).round(2))
            .pipe(markdown, index=True),
            "",
            "Hedging weight per held-out patient (mean over seeds):",
            "",
            df[(df.design == name) & df.weight.notna()]
            .groupby(["method", "group"], sort=False)
            .weight.mean()
            .unstack("group")
            .round(2)
            .pipe(markdown, index=True),
            "",
        ]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--designs", nargs="*", default=list(DESIGNS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--out", default=OUT, type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    (args.out / "transfer_fits").mkdir(parents=True, exist_ok=True)
    csv = args.out / "transfer.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=["design", "seed"])
    designs = {}
    for name in args.designs:
        designs[name] = design = Design(name)
        for seed in args.seeds:
            fits = run_fits(design, seed, args.out / "transfer_fits" / f"{name}_seed{seed}.npz")
            rows = rows_for(design, seed, fits)
            done = done[~((done.design == name) & (done.seed == seed))]
            done = pd.concat([done, rows], ignore_index=True)
            done.to_csv(csv, index=False)
            write_report(done, designs, args.out / "transfer.md")


if __name__ == "__main__":
    main()
