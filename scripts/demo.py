"""Hold out one (cell type, condition), train trVAE without it, predict it, score and plot.

Default data: ``sctrvae.datasets.simulate``. ``--data file.h5ad`` runs the same on real counts.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import anndata as ad
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import scvi

import sctrvae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", help="h5ad with raw counts in X (default: simulated data)")
    parser.add_argument("--condition-key", default="condition")
    parser.add_argument("--cell-type-key", default="cell_type")
    parser.add_argument("--holdout", help="cell type whose target-condition cells are held out")
    parser.add_argument("--source", help="source condition (default: the first category)")
    parser.add_argument("--target", help="target condition (default: the last category)")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="demo_output")
    args = parser.parse_args()

    scvi.settings.seed = args.seed
    if args.data:
        adata = ad.read_h5ad(args.data)
    else:
        adata = sctrvae.datasets.simulate(n_cells=3000, n_genes=1000, seed=args.seed)
    ck, tk = args.condition_key, args.cell_type_key
    conditions = list(adata.obs[ck].astype("category").cat.categories)
    source = args.source or conditions[0]
    target = args.target or conditions[-1]
    holdout = args.holdout or str(adata.obs[tk].astype("category").cat.categories[0])

    is_type = (adata.obs[tk].astype(str) == holdout).to_numpy()
    held_out = is_type & (adata.obs[ck].astype(str) == target).to_numpy()
    train = adata[~held_out].copy()
    source_cells = adata[is_type & (adata.obs[ck].astype(str) == source).to_numpy()].copy()
    real = adata[held_out].copy()
    print(
        f"{adata.n_obs} cells x {adata.n_vars} genes; holding out {holdout} / {target} "
        f"({real.n_obs} cells), predicting from {source_cells.n_obs} {source} cells"
    )

    sctrvae.TRVAEModel.setup_anndata(train, condition_key=ck)
    model = sctrvae.TRVAEModel(train)
    start = time.perf_counter()
    model.train(max_epochs=args.max_epochs, enable_progress_bar=False)
    print(
        f"trained {len(model.history['elbo_train'])} epochs in {time.perf_counter() - start:.1f} s"
    )

    mean_pred = model.predict(source_cells, target_condition=target)
    drawn_pred = model.predict(source_cells, target_condition=target, n_samples=1)
    degs = sctrvae.metrics.top_degs(real, source_cells, n_genes=100)
    readouts = {
        "mean (pred.layers['normalized'])": (mean_pred, "normalized"),
        "NB draws (pred.X, n_samples=1)": (drawn_pred, None),
    }
    for name, (pred, layer) in readouts.items():
        scores = sctrvae.metrics.score_prediction(
            pred, real, source_cells, degs=degs, predicted_layer=layer
        )
        print(f"\n{name}")
        for key, value in scores.items():
            print(f"  {key:18s} {value:.3f}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    sctrvae.pl.reg_mean_plot(mean_pred, real, degs=degs, ax=axes[0])
    sctrvae.pl.reg_var_plot(drawn_pred, real, degs=degs, ax=axes[1])
    fig.suptitle(f"trVAE: {holdout}, {source} → {target} (held out)")
    fig.tight_layout()
    fig.savefig(out / "demo.png", dpi=150)
    print(f"\nfigure: {out / 'demo.png'}")


if __name__ == "__main__":
    main()
