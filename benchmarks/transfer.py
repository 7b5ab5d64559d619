"""Transfer to held-out groups: the model, the shared response and hedged predictions.

    python benchmarks/transfer.py          # writes benchmarks/results/transfer.{csv,md}
    python benchmarks/transfer.py --designs unlike --seeds 0

Designs (:func:`sctrvae.datasets.simulate_patients`, 2,500 cells, 300 genes, 5 patients, data
seed 0): ``unlike``, where the two patients most alike at baseline respond least alike (the
failure of a model that lends cells the response of look-alike cells), and ``alike``, its
control, identical except that the pair responds alike through the map every patient follows.
``kang``: Kang's PBMCs with each cell type held out in turn (top-100 DEGs), the data of the
"loses at most 0.005 on Kang" check; the text below says "patient" for either.

Each patient ``t`` is held out in turn: train without its stimulated cells, predict them from its
control cells, score the predicted mean change (log-normalised) against the real one over ``t``'s
top-50 DEGs (``pearson_delta_deg``) and the mean expression there (``r2_mean_deg``). Methods:

- ``model``: the default model, calibrated readout (5 draws per cell);
- ``mean_shift`` / ``median_shift``: control + mean / gene-wise median of the others' changes;
- ``nearest_shift``: control + the change of the patient closest at baseline;
- ``hedge``: what ``sctrvae.tl.hedge`` does: ``median shift + w · (model − median shift)`` with
  ``w = 1 − (1 − L) · Σ_g coverage_g · (1 − reliability_g)``, clipped to [0, 1].
  ``coverage_g``: how far patient ``g``'s control cells cover ``t``'s in the model's ``z``
  (``sctrvae.tl.donor_coverage``, 30 neighbours; 1 for a look-alike that mixes with ``t``, 0 for a
  patient apart). ``reliability_g`` comes from the transfer check inside the training data (every
  other patient ``g`` left out in turn, ``t``'s stimulated cells absent as well, as
  ``sctrvae.tl.transfer_check`` on the model that predicts ``t``): 1 if the refit beat both the
  mean and the median shift on ``g``'s DEGs, else 0 (``best``). ``L``, the lending record: over
  the checked groups, ``Σ_h lent_h · reliability_h / (Σ_h lent_h + 1)``, where ``lent_h`` is how
  far ``h``'s cells were covered, in its refit, by groups treated there (a check that tested
  lending a look-alike's response). Its 90% interval per gene (``sctrvae.tl.change_se``) is
  scored by ``coverage90_deg`` / ``coverage90_all``: the fraction of ``t``'s DEGs / of all genes
  whose real change it covers;
- variants ``hedge_<weighting>_<reliability>[_mean_base]``. Weightings: ``coverage`` (as ``hedge``
  without the lending record, ``L = 0``), ``shares`` (``w`` = the reliabilities averaged with
  weights ``g``'s share among the 30 nearest neighbours in ``z`` of ``t``'s cells among the other
  patients' control cells: the previous ``tl.hedge``), ``uniform`` (a plain average), ``record`` (as
  ``coverage``, but the uncovered part of ``t`` gets the average reliability of the checked groups
  that were not covered themselves, instead of 1). Reliabilities: ``best`` (as ``hedge``),
  ``bestramp`` (0.5 + margin over the better shared response / 0.1, clipped), ``ramp`` (0.5 + margin
  over the mean shift / 0.2, clipped: the previous ``tl.transfer_check``), ``binary`` (1 if the
  refit beat the mean shift), ``share`` (the share of ``g``'s own response beyond the mean shift
  that the refit predicted, ⟨D_real, D_model⟩ / ‖D_real‖², clipped to [0, 1]), ``shrink``
  (least-squares shrinkage ⟨D_real, D_model⟩ / ‖D_model‖², clipped). ``_mean_base``: toward the mean
  shift. ``hedge_half``: ``w = 0.5``; ``oracle``: the best ``w`` in hindsight, toward the median
  shift (a ceiling, not a method);
- ``model_patient_batch``: the default model with the patients registered
  (``batch_key="patient"``), no hedge.

Every fit's predicted changes and neighbour shares are stored in
``benchmarks/results/transfer_fits/<design>_seed<seed>.npz`` as soon as the fit is done; a rerun
skips those fits and recomputes every row (cheap) from them, appending the new (design, seed)
rows to the CSV.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import warnings
from itertools import combinations
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scvi
from sklearn.neighbors import NearestNeighbors

import sctrvae
from sctrvae.metrics import top_degs
from sctrvae.tl import change_se, donor_coverage
from sctrvae.tl._hedge import hedge_weight
from sctrvae.tl._transfer_check import (
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
    "kang": None,
}
CONDITION, SOURCE, TARGET = "condition", "control", "stimulated"
N_NEIGHBOURS, N_SAMPLES = 30, 5
DEFAULT_KANG = ROOT.parent / "shared" / "data" / "kang_pbmc_ifnb_1975.h5ad"
#: Keyword arguments of every fit's ``train()`` (the default budget).
TRAIN_KWARGS: dict = {}


class Design:
    """A design with each group's real means, changes and DEGs.

    The simulated designs hold patients out (top-50 DEGs); ``kang`` holds cell types out (top-100
    DEGs, as every Kang benchmark), from ``$SCTRVAE_KANG_PATH`` or ``../shared/data``.
    """

    def __init__(self, name: str):
        self.name = name
        if name == "kang":
            path = os.environ.get("SCTRVAE_KANG_PATH", DEFAULT_KANG)
            self.adata, self.group, self.n_degs = ad.read_h5ad(path), "cell_type", 100
        else:
            self.adata = sctrvae.datasets.simulate_patients(**DESIGNS[name])
            self.group, self.n_degs = "patient", 50
        self.groups = list(self.adata.obs[self.group].cat.categories)
        self.baseline, self.changes = sctrvae.tl.group_changes(
            self.adata, self.group, CONDITION, SOURCE, TARGET
        )
        labels = self.adata.obs[self.group].to_numpy()
        condition = self.adata.obs[CONDITION].to_numpy()
        self.source = {g: (labels == g) & (condition == SOURCE) for g in self.groups}
        self.target = {g: (labels == g) & (condition == TARGET) for g in self.groups}
        self.degs = {
            g: self.adata.var_names.isin(
                top_degs(self.adata[self.target[g]], self.adata[self.source[g]], self.n_degs)
            )
            for g in self.groups
        }


def fit(design: Design, held_out: tuple[str, ...], seed: int) -> dict[str, np.ndarray]:
    """Train without the held-out groups' stimulated cells; their predicted changes and cover.

    ``<g>:coverage``: how far each other group's control cells cover ``g``'s in the fit's ``z``
    (:func:`sctrvae.tl.donor_coverage`; every other group's, the other held-out one included).
    The outer fit (one group held out) also stores ``<t>:shares`` (``t``'s neighbours among the
    others, as the previous ``tl.hedge`` weighed donors) and ``<t>:change_batch``, the
    prediction of a model that also registers the patients (``batch_key``).
    """
    adata = design.adata
    keep = ~np.any([design.target[g] for g in held_out], axis=0)
    scvi.settings.seed = seed
    model = refit_like(_template(adata), adata[keep].copy(), **TRAIN_KWARGS)
    out = {}
    is_source = np.any([design.source[g] for g in design.groups], axis=0)
    z = model.get_latent_representation(adata[is_source].copy())
    labels = adata.obs[design.group].to_numpy()[is_source]
    for g in held_out:
        out[f"{g}:change"] = predicted_change(
            model, adata[design.source[g]].copy(), TARGET, "calibrated", N_SAMPLES
        )
        others = labels != g
        coverage = donor_coverage(z[~others], z[others], labels[others], N_NEIGHBOURS)
        out[f"{g}:coverage"] = coverage.reindex(design.groups).to_numpy()
    if len(held_out) == 1:
        (t,) = held_out
        others = labels != t
        shares = neighbour_shares(z[~others], z[others], labels[others])
        out[f"{t}:shares"] = shares.reindex(design.groups, fill_value=0.0).to_numpy()
    if len(held_out) == 1 and design.name != "kang":  # patients, not cell types, as a batch
        scvi.settings.seed = seed
        batch_model = refit_like(_template(adata, design.group), adata[keep].copy(), **TRAIN_KWARGS)
        out[f"{t}:change_batch"] = predicted_change(
            batch_model, adata[design.source[t]].copy(), TARGET, "calibrated", N_SAMPLES
        )
    return out


def neighbour_shares(query: np.ndarray, reference: np.ndarray, groups: np.ndarray) -> pd.Series:
    """Share of each group among the ``N_NEIGHBOURS`` nearest reference cells of the queries."""
    nn = NearestNeighbors(n_neighbors=min(N_NEIGHBOURS, len(reference))).fit(reference)
    _, idx = nn.kneighbors(query)
    return pd.Series(groups[idx].ravel()).value_counts(normalize=True)


def _template(adata, batch_key: str | None = None):
    """An untrained default model whose registry and init parameters the refits copy."""
    template_data = adata[:50].copy()
    sctrvae.TRVAEModel.setup_anndata(template_data, condition_key=CONDITION, batch_key=batch_key)
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
        # float32 and compressed: the Kang fits (7k genes) stay under 2 MB per seed
        np.savez_compressed(cache, **{k: v.astype(np.float32) for k, v in stored.items()})
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
        over_mean = scores["model"] - scores["mean_shift"]
        over_best = scores["model"] - max(scores["mean_shift"], scores["median_shift"])
        rows.append(
            {
                "group": g,
                "best": float(over_best > 0),
                "bestramp": float(np.clip(0.5 + over_best / 0.1, 0, 1)),
                "ramp": float(np.clip(0.5 + over_mean / 0.2, 0, 1)),
                "binary": float(over_mean > 0),
                "share": float(np.clip(d_real @ d_pred / max(d_real @ d_real, 1e-12), 0, 1)),
                "shrink": float(np.clip(d_real @ d_pred / max(d_pred @ d_pred, 1e-12), 0, 1)),
                "covered": float(np.nansum(fits[f"{pair}/{g}:coverage"]).clip(max=1.0)),
                # covered by groups treated in that refit: a lending event
                "lent": float(
                    pd.Series(fits[f"{pair}/{g}:coverage"], index=design.groups)
                    .drop(index=[t, g])
                    .sum()
                    .clip(max=1.0)
                ),
                "changes": {"real": real, "model": model_change, **shared},
            }
        )
    return pd.DataFrame(rows).set_index("group")


#: Hedging rules: (weighting of the donors, reliability column, shared response hedged toward).
RULES = {
    "hedge": ("lending", "best", "median_shift"),
    "hedge_coverage_best": ("coverage", "best", "median_shift"),
    "hedge_coverage_bestramp": ("coverage", "bestramp", "median_shift"),
    "hedge_coverage_ramp": ("coverage", "ramp", "median_shift"),
    "hedge_coverage_binary": ("coverage", "binary", "median_shift"),
    "hedge_record_best": ("record", "best", "median_shift"),
    "hedge_shares_ramp": ("shares", "ramp", "median_shift"),
    "hedge_shares_ramp_mean_base": ("shares", "ramp", "mean_shift"),
    "hedge_shares_binary": ("shares", "binary", "median_shift"),
    "hedge_shares_best": ("shares", "best", "median_shift"),
    "hedge_shares_share_mean_base": ("shares", "share", "mean_shift"),
    "hedge_shares_shrink_mean_base": ("shares", "shrink", "mean_shift"),
    "hedge_uniform_ramp": ("uniform", "ramp", "median_shift"),
}


def weight(weighting: str, reliability: pd.Series, evidence: pd.DataFrame, fits, t, groups):
    """The hedging weight of target ``t`` under one rule (see the module docstring)."""
    if weighting == "uniform":
        return float(reliability.mean())
    if weighting == "shares":
        shares = pd.Series(fits[f"{t}/{t}:shares"], index=groups)[reliability.index]
        return float(shares @ reliability)
    coverage = pd.Series(fits[f"{t}/{t}:coverage"], index=groups)[reliability.index]
    if weighting == "record":
        uncovered = max(0.0, 1.0 - coverage.sum())
        novel = 1.0 - evidence["covered"]
        record = float(novel @ reliability / novel.sum()) if novel.sum() > 0 else 0.5
        return float(min(1.0, coverage @ reliability + uncovered * record))
    # "lending": what tl.hedge does; "coverage": the same without the lending record
    lent = evidence["lent"] if weighting == "lending" else 0.0 * evidence["lent"]
    return hedge_weight(coverage, reliability, lent)


def hedged(
    model: np.ndarray, shared: dict, evidence: pd.DataFrame, w: float, base_name: str
) -> tuple[np.ndarray, float, np.ndarray]:
    """``base + w · (model − base)``, ``w`` and its per-gene standard error from the evidence."""
    base = shared[base_name]
    residuals = np.array(
        [c["real"] - c[base_name] - w * (c["model"] - c[base_name]) for c in evidence["changes"]]
    )
    return base + w * (model - base), w, change_se(residuals)


def rows_for(design: Design, seed: int, fits: dict[str, np.ndarray]) -> pd.DataFrame:
    rows = []
    for t in design.groups:
        real = design.changes.loc[t].to_numpy()
        source_mean = design.baseline.loc[t].to_numpy()
        mask = design.degs[t]
        shared = shared_changes(design.changes.drop(index=t))
        distance = ((design.baseline.drop(index=t) - source_mean) ** 2).sum(1)
        model = fits[f"{t}/{t}:change"]
        evidence = inner_evidence(design, fits, t)
        predictions = {
            "model": (model, np.nan, None),
            **{m: (c, np.nan, None) for m, c in shared.items()},
            "nearest_shift": (design.changes.loc[distance.idxmin()].to_numpy(), np.nan, None),
        }
        for name, (weighting, column, base_name) in RULES.items():
            w = weight(weighting, evidence[column], evidence, fits, t, design.groups)
            predictions[name] = hedged(model, shared, evidence, w, base_name)
        if f"{t}/{t}:change_batch" in fits:
            predictions["model_patient_batch"] = (fits[f"{t}/{t}:change_batch"], np.nan, None)
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
    out = (scores - better).round(3) + 0.0  # no "-0.0"
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


def structure(design: Design) -> str:
    """The look-alike structure measured from the counts (simulated designs), or the data."""
    if design.name == "kang":
        return (
            "Kang et al. 2018 PBMCs (1,975 cells × 6,998 genes); each cell type held out in turn."
        )
    sim = sctrvae.tl.group_similarity(design.adata, design.group, CONDITION, SOURCE, TARGET)
    pair = design.adata.uns["simulation"]["pair"]
    is_pair = [{a, b} == set(pair) for a, b in zip(sim.group_a, sim.group_b, strict=True)]
    pair_row = sim[is_pair].iloc[0]
    rest = sim[~np.array(is_pair)]
    return (
        f"Structure measured from the counts: the pair {pair[0]} / {pair[1]} is "
        f"{'the closest' if is_pair[0] else 'NOT the closest'} at baseline (distance "
        f"{pair_row.baseline_distance:.1f}; other pairs {rest.baseline_distance.min():.1f}–"
        f"{rest.baseline_distance.max():.1f}); its response correlation is "
        f"{pair_row.response_correlation:.2f} (other pairs "
        f"{rest.response_correlation.min():.2f}–{rest.response_correlation.max():.2f})."
    )


def write_report(df: pd.DataFrame, designs: dict[str, Design], path: Path) -> None:
    seeds = ", ".join(str(s) for s in sorted(df.seed.unique()))
    for name in df.design.unique():
        designs.setdefault(name, Design(name))
    lines = [
        "# Transfer to held-out groups: model, shared response, hedging",
        "",
        "Regenerate: `python benchmarks/transfer.py` (its docstring describes designs and "
        "methods).",
        "",
        "Pearson r of predicted vs real mean change (log-normalised) over the held-out group's "
        f"top DEGs (50 for patients, 100 for Kang's cell types); mean ± sd over training seeds "
        f"{seeds} per held-out group; `mean`: mean over groups, ± sd of that mean over seeds.",
        "",
    ]
    for name in df.design.unique():
        design = designs[name]
        lines += [f"## Design `{name}`", "", structure(design), ""]
        lines += [
            summary(df[df.design == name]).drop(columns="design").pipe(markdown),
            "",
            "R² of mean expression over the DEGs:",
            "",
            summary(df[df.design == name], "r2_mean_deg").drop(columns="design").pipe(markdown),
            "",
            "Against the better of the model and the shared response (median shift), per "
            "held-out group (means over seeds):",
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
            "Hedging weight per held-out group (mean over seeds):",
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
