"""Trains with ``strategy="ddp"`` launched as a script, as the README recommends, with no seed.

``python ddp_script.py OUT`` (Lightning's launcher re-runs it in a second process) or
``torchrun --nproc-per-node=2 ddp_script.py OUT``. Each rank writes ``OUT/rank{r}.json`` (the
cells of every training batch) and ``OUT/split{r}.json`` (its model's train/validation indices).
"""

import json
import sys
from pathlib import Path

import scvi
import torch.distributed as dist
from test_ddp import model_with_cell_ids, train_on_two_ranks

if __name__ == "__main__":
    out = Path(sys.argv[1])
    # the point of the run: nothing may make the processes' random draws agree by chance
    assert scvi.settings.seed is None
    model = model_with_cell_ids()
    train_on_two_ranks(model, "ddp", out)
    split = {
        "train": model.train_indices.tolist(),
        "validation": model.validation_indices.tolist(),
    }
    (out / f"split{model.trainer.global_rank}.json").write_text(json.dumps(split))
    # Lightning leaves the process group open; one left to interpreter exit can abort in gloo's
    # teardown ("terminate called without an active exception"), so the script ends it itself
    if dist.is_initialized():
        dist.destroy_process_group()
