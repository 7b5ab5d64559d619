"""The public transfer check and hedge, end to end, on one fold of the failure design.

    python benchmarks/transfer_end_to_end.py   # writes benchmarks/results/transfer_end_to_end.md

Patient 4 of ``simulate_patients(pair_response="unlike", seed=0)`` is held out (its look-alike,
patient 3, responds unlike it): the default model is trained without its stimulated cells,
``sctrvae.tl.transfer_check`` leaves out each other patient in turn, and ``sctrvae.tl.hedge``
hedges the calibrated prediction. What ``benchmarks/transfer.py`` measures with cached fits, here
through the functions users call.
"""

from __future__ import annotations

import time

import numpy as np
import scvi
from _common import RESULTS, parser, quiet, report_header

import sctrvae
from sctrvae.metrics import log_normalized, top_degs
from sctrvae.tl._held_out import score_change

HELD_OUT = "patient_4"


def main() -> None:
    out = parser(__doc__, out=RESULTS / "transfer_end_to_end.md").parse_args().out
    quiet()
    adata = sctrvae.datasets.simulate_patients(pair_response="unlike", seed=0)
    obs = adata.obs
    held = ((obs.patient == HELD_OUT) & (obs.condition == "stimulated")).to_numpy()
    source = ((obs.patient == HELD_OUT) & (obs.condition == "control")).to_numpy()
    train = adata[~held].copy()
    scvi.settings.seed = 0
    sctrvae.TRVAEModel.setup_anndata(train, condition_key="condition")
    model = sctrvae.TRVAEModel(train)
    model.train(enable_progress_bar=False)
    start = time.perf_counter()
    check = sctrvae.tl.transfer_check(model, "patient", "control", "stimulated", progress=False)
    seconds = time.perf_counter() - start

    data = adata.copy()
    model.predict(
        data,
        indices=np.flatnonzero(source),
        target_condition="stimulated",
        readout="calibrated",
        n_samples=5,
        key_added="pred",
    )
    sctrvae.tl.hedge(model, data, check, "patient", "pred")
    record = data.uns["pred_hedged"]
    baseline, changes = sctrvae.tl.group_changes(
        adata, "patient", "condition", "control", "stimulated"
    )
    degs = adata.var_names.isin(top_degs(adata[held], adata[source], 50))
    real, source_mean = changes.loc[HELD_OUT].to_numpy(), baseline.loc[HELD_OUT].to_numpy()
    own = log_normalized(adata[source]).mean(0)
    lines = [
        *report_header(
            "Transfer check and hedge, end to end",
            "python benchmarks/transfer_end_to_end.py",
            see="docstring: the setting",
        ),
        f"Transfer check of the model trained without {HELD_OUT}'s stimulated cells "
        f"({seconds:.0f} s for {check.group.nunique()} refits, 1 thread):",
        "",
        "```",
        check.round(3).to_string(index=False),
        "```",
        "",
        f"Hedging weight of {HELD_OUT}: {record['weights'][HELD_OUT]:.2f}.",
        "",
        "Scores on the held-out patient's top-50 DEGs:",
        "",
    ]
    for name, change in (
        ("model (calibrated)", np.nanmean(data.layers["pred"][source], 0) - own),
        ("hedged", np.nanmean(data.layers["pred_hedged"][source], 0) - own),
        ("median shift", changes.drop(index=HELD_OUT).median(axis=0).to_numpy()),
    ):
        scores = score_change(change, real, source_mean, degs)
        lines.append(
            f"- {name}: Δ-Pearson {scores['pearson_delta_deg']:.3f}, "
            f"R² of means {scores['r2_mean_deg']:.3f}"
        )
    half = 1.645 * record["change_se"].loc[HELD_OUT].to_numpy()
    covered = np.abs(real - record["change"].loc[HELD_OUT].to_numpy()) <= half
    lines += [
        "",
        f"90% intervals of the hedged change cover the real change for {covered[degs].mean():.0%} "
        f"of the DEGs and {covered.mean():.0%} of all genes.",
        "",
    ]
    out.write_text("\n".join(lines))
    print(out.read_text())


if __name__ == "__main__":
    main()
