"""A training run killed (SIGKILL) mid-epoch resumes from its checkpoint to the end state of an
uninterrupted run: the same weights, number of optimiser steps, best epoch and KL weight."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("resume_script.py")
TIMEOUT = 300


def script(out, mode, ddp):
    # no PL_* variables of this process (the autouse seed fixture sets PL_GLOBAL_SEED)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PL_")}
    command = [sys.executable, str(SCRIPT), str(out), mode, *(["ddp"] if ddp else [])]
    return command, env


def run(out, mode, ddp):
    command, env = script(out, mode, ddp)
    subprocess.run(command, env=env, check=True, timeout=TIMEOUT)
    return torch.load(out / f"{mode}.pt", weights_only=False)


def run_and_kill(out, ddp):
    """Start a run and SIGKILL it (every process of it) once it is in the middle of an epoch."""
    command, env = script(out, "kill", ddp)
    process = subprocess.Popen(command, env=env, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    try:
        while not (out / "hanging").exists():
            assert process.poll() is None, f"the run ended ({process.returncode}) before the kill"
            assert time.monotonic() < deadline, "the run did not reach the kill"
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("ddp", [False, True], ids=["one process", "ddp"])
def test_a_killed_run_resumes_to_the_end_state_of_an_uninterrupted_one(tmp_path, ddp):
    full = run(tmp_path / "full", "full", ddp)
    killed = tmp_path / "killed"
    run_and_kill(killed, ddp)
    assert not (killed / "kill.pt").exists()
    checkpoint = torch.load(killed / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 9  # the last one before the kill, mid-epoch
    resumed = run(killed, "resume", ddp)

    assert resumed["global_step"] == full["global_step"] == (12 if ddp else 24)
    assert resumed["kl_weight"] == pytest.approx(full["kl_weight"])
    # epochs validated at the full KL weight compete for the best weights (no validation
    # under DDP)
    assert resumed["best_epoch"] == full["best_epoch"]
    assert (full["best_epoch"] is None) == ddp
    assert full["weights"].keys() == resumed["weights"].keys()
    for key, value in full["weights"].items():
        torch.testing.assert_close(resumed["weights"][key], value, rtol=1e-4, atol=1e-5)
