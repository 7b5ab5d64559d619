"""Does registering donors help? trVAE with and without ``batch_key`` on a multi-donor simulation.

    python benchmarks/covariates.py      # writes benchmarks/results/covariates.{csv,md}
    python benchmarks/covariates.py --designs shared --seeds 0 --max-epochs 20   # a quick look

Data: :func:`sctrvae.datasets.simulate_donors` (4 donors, 3 cell types, 300 genes, 2,400 cells).
Designs: ``none`` (no donor effect), ``shared`` (donor baselines, a shared response),
``specific`` (donor baselines, a partly donor-specific response), ``unbalanced`` (donor baselines, a
shared response, and donors spread unequally over the conditions: about 80 % of the first donor's
cells are controls, 20 % of the last one's, so that donor and condition are confounded in
training, as in studies that did not sample every donor in every condition). Per design and seed:

- *held-out (cell type, condition)*: ``type_0`` stimulated cells of every donor are left out; the
  model transfers the training donors' ``type_0`` control cells (each keeping its donor) and is
  scored against the real ``type_0`` stimulated cells of those donors.
- *held-out donor*: ``donor_3`` is left out of training. With covariates, its control cells are
  mapped as a query (scArches surgery for the new donor, only its columns train) and transferred;
  without, the reference model transfers them directly. Scored against ``donor_3``'s real
  stimulated cells.

Every arm registers ``labels_key="cell_type"`` (the default reweighted MMD) and uses the
default model and ``train()``; "with" adds ``batch_key="donor"`` (the donor in the decoder,
meeting the condition in ``y``; MMD matched by (label, donor)); "with, after y" is the same with
``covariates_in_y=False`` (the donor enters ``g2`` only, after the MMD layer). Scores:
Δ-Pearson and R² of means and variances over the top 50 DEGs; on the training cells' ``z``, donor
mixing (:func:`sctrvae.metrics.condition_mixing` with the donor as the "condition", within cell
types; 1/3 is perfectly mixed) and cell-type separation (the same with the cell type; 1 is fully
separated).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
import scvi
from _common import RESULTS, parser, quiet, report_header

import sctrvae
from sctrvae.metrics import condition_mixing, score_prediction

DESIGNS = {
    "none": {"donor_effect": 0.0, "donor_response": 0.0},
    "shared": {"donor_effect": 0.5, "donor_response": 0.0},
    "specific": {"donor_effect": 0.5, "donor_response": 0.5},
    "unbalanced": {"donor_effect": 0.5, "donor_response": 0.0, "condition_imbalance": 0.6},
}
METRICS = ["pearson_delta_deg", "r2_mean_deg", "r2_var_deg"]
HELD_OUT_TYPE, QUERY_DONOR = "type_0", "donor_3"


#: Arms: (``batch_key``, module keyword arguments). ``after y``: the donor enters ``g2`` only (the
#: decoder before ``covariates_in_y`` became the default).
ARMS = {
    "without": (None, {}),
    "with, after y": ("donor", {"covariates_in_y": False}),
    "with": ("donor", {}),
}


def fit(adata, arm: str, max_epochs: int | None):
    batch_key, module_kwargs = ARMS[arm]
    sctrvae.TRVAEModel.setup_anndata(
        adata, condition_key="condition", labels_key="cell_type", batch_key=batch_key
    )
    model = sctrvae.TRVAEModel(adata, **module_kwargs)
    model.train(max_epochs=max_epochs, enable_progress_bar=False)
    return model


def score(pred, real, source) -> dict[str, float]:
    scores = score_prediction(pred, real, source, n_degs=50)
    return {k: scores[k] for k in METRICS}


def query_prediction(model, query, arm: str, max_epochs: int | None):
    """``query``'s control cells transferred to stimulated; a new donor is mapped first."""
    if ARMS[arm][0] is not None:
        model = sctrvae.TRVAEModel.load_query_data(query, model)
        model.train(
            max_epochs=max_epochs or 100,
            enable_progress_bar=False,
            plan_kwargs={"weight_decay": 0.0},
        )
    return model.predict(query, target_condition="stimulated")


def run_one(design: str, seed: int, arm: str, max_epochs: int | None) -> list[dict]:
    scvi.settings.seed = seed
    data = sctrvae.datasets.simulate_donors(n_cells=2400, n_genes=300, seed=seed, **DESIGNS[design])
    obs = data.obs
    is_type, stim = obs["cell_type"] == HELD_OUT_TYPE, obs["condition"] == "stimulated"
    in_query = obs["donor"] == QUERY_DONOR
    train = data[~in_query & ~(is_type & stim)].copy()
    start = time.perf_counter()
    model = fit(train, arm, max_epochs)
    seconds = time.perf_counter() - start
    z = model.get_latent_representation()
    common = {
        "design": design,
        "seed": seed,
        "covariates": arm,
        "n_train": train.n_obs,
        "fit_s": round(seconds, 1),
        "donor_mixing_z": condition_mixing(z, train.obs["donor"], train.obs["cell_type"]),
        "type_separation_z": condition_mixing(z, train.obs["cell_type"]),
    }
    source = train[(train.obs["cell_type"] == HELD_OUT_TYPE)].copy()
    pred = model.predict(source, target_condition="stimulated")
    rows = [
        {**common, "task": "held-out type", **score(pred, data[~in_query & is_type & stim], source)}
    ]
    query = data[in_query & ~stim].copy()
    pred = query_prediction(model, query, arm, max_epochs)
    rows.append({**common, "task": "held-out donor", **score(pred, data[in_query & stim], query)})
    return rows


def report(table: pd.DataFrame) -> str:
    cols = [*METRICS, "donor_mixing_z", "type_separation_z"]
    grouped = table.groupby(["task", "design", "covariates"], sort=False)[cols]
    mean, sd = grouped.mean(), grouped.std()
    lines = [
        "| task | design | covariates | " + " | ".join(cols) + " |",
        "|" + " --- |" * (3 + len(cols)),
    ]
    for key in mean.index:
        cells = [f"{mean.loc[key, c]:.3f} ± {sd.loc[key, c]:.3f}" for c in cols]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired(table: pd.DataFrame) -> str:
    """Registering the donor (default decoder) minus not registering it, on the same seeds."""
    scores = table.pivot_table(
        index=["task", "design", "seed"], columns="covariates", values="pearson_delta_deg"
    )
    gain = (scores["with"] - scores["without"]).groupby(["task", "design"], sort=False)
    lines = [
        "| task | design | with − without, Δ-Pearson DEG (mean ± sd over seeds) | seeds better |",
        "| --- | --- | --- | --- |",
    ]
    for (task, design), diff in gain:
        lines.append(
            f"| {task} | {design} | {diff.mean():+.3f} ± {diff.std():.3f} | "
            f"{int((diff > 0).sum())} of {diff.count()} |"
        )
    return "\n".join(lines)


def main():
    options = parser(__doc__, out=RESULTS / "covariates", seeds=[0, 1, 2, 3, 4])
    options.add_argument("--designs", nargs="+", default=list(DESIGNS))
    options.add_argument("--max-epochs", type=int, default=None)
    args = options.parse_args()
    quiet()
    rows, start = [], time.perf_counter()
    for design in args.designs:
        for seed in args.seeds:
            for arm in ARMS:
                rows += run_one(design, seed, arm, args.max_epochs)
                pd.DataFrame(rows).to_csv(f"{args.out}.csv", index=False)
                print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    header = report_header(
        "Registering donors (`batch_key`)",
        "python benchmarks/covariates.py",
        wall=time.perf_counter() - start,
    )
    setting = (
        f"Designs {args.designs}, seeds {args.seeds}, OMP_NUM_THREADS="
        f"{os.environ.get('OMP_NUM_THREADS', 'unset')}; other jobs ran at the same time, so "
        "times are loose. Mean ± sd over seeds.\n\n"
    )
    text = report(table) + "\n\nPaired by seed:\n\n" + paired(table) + "\n"
    Path(f"{args.out}.md").write_text("\n".join(header) + setting + text)
    print(text)


if __name__ == "__main__":
    main()
