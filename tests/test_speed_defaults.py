import math
import os
import subprocess
import sys

import lightning.pytorch as pl
import numpy as np
import pytest
import scvi
import torch
from scvi.train import TrainingPlan

import sctrvae
from sctrvae import TRVAEModel, _threads
from sctrvae._constants import DEFAULT_LR, GENE_LR_SCALE, KL_WARMUP_STEPS, MIN_STEPS
from sctrvae.train import _optimizer
from sctrvae.train._training_plan import GENE_PARAMETERS, TRVAETrainingPlan, cosine_lr_factor
from sctrvae.train._training_settings import step_budget, steps_per_epoch


class PlainAdamPlan(TRVAETrainingPlan):
    """The plan's epoch-level logging with scvi-tools' per-tensor Adam."""

    _optimizer_creator_fn = TrainingPlan._optimizer_creator_fn


class ScviLoggingPlan(TrainingPlan):
    """scvi-tools' per-step logging (under no_grad, as before this plan logged per epoch)."""

    def __init__(self, *args, lr_schedule=None, gene_lr_scale=1.0, **kwargs):
        # the schedule and the per-gene rate are TRVAETrainingPlan's: compared without them
        assert lr_schedule is None
        assert gene_lr_scale == 1.0
        super().__init__(*args, **kwargs)

    def compute_and_log_metrics(self, loss_output, metrics, mode):
        with torch.no_grad():
            TrainingPlan.compute_and_log_metrics.__wrapped__(self, loss_output, metrics, mode)


def _history(plan_cls, adata):
    scvi.settings.seed = 0
    model = TRVAEModel(adata, n_hidden=16, n_latent=3)
    model._training_plan_cls = plan_cls
    plan = {"lr_schedule": None, "gene_lr_scale": 1.0, "n_steps_kl_warmup": 27}
    model.train(
        max_epochs=3,
        batch_size=64,
        early_stopping_patience=5,
        plan_kwargs=plan,
        enable_progress_bar=False,
    )
    return {k: v.iloc[:, 0].to_numpy(dtype=float) for k, v in model.history.items()}


def test_epoch_metrics_equal_scvi_tools_per_step_logging(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    ours, theirs = _history(PlainAdamPlan, sim), _history(ScviLoggingPlan, sim)
    names = ["train_loss", "elbo_train", "reconstruction_loss_train", "kl_local_train"]
    names += ["mmd_train", "validation_loss", "elbo_validation", "mmd_validation"]
    for name in names:
        assert ours[name].shape == (3,), name
        np.testing.assert_allclose(ours[name], theirs[name], rtol=1e-5, err_msg=name)
    # the module has no global KL: scvi-tools logs zeros, the plan leaves the key out
    assert not theirs["kl_global_train"].any()
    assert "kl_global_train" not in ours
    # warm-up over the run's 27 steps; logged: the weight of each epoch's last step
    np.testing.assert_allclose(ours["kl_weight"], np.array([8, 17, 26]) / 27, rtol=1e-6)


def test_fused_adam_takes_the_plain_adam_step(trained):
    model, _ = trained
    plan = TRVAETrainingPlan(model.module, lr=3e-3)
    fused = plan.configure_optimizers()["optimizer"]
    assert fused.defaults["fused"] is True
    start = {k: v.clone() for k, v in model.module.state_dict().items()}
    params = [p for p in model.module.parameters() if p.requires_grad]
    grads = [torch.randn_like(p) for p in params]
    results = []
    for optimizer in (fused, torch.optim.Adam(params, lr=3e-3, eps=plan.eps, weight_decay=1e-6)):
        model.module.load_state_dict(start)
        for _ in range(3):
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            optimizer.step()
        results.append([p.detach().clone() for p in params])
    model.module.load_state_dict(start)
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not torch.equal(results[0][0], start[next(iter(start))])


def test_small_parameter_groups_update_on_one_thread(trained, monkeypatch):
    # a limit the test model's widest tensors exceed: its groups split into wide and small
    model, _ = trained
    monkeypatch.setattr(_threads, "ONE_THREAD_ENTRIES", 500)
    monkeypatch.setattr(_optimizer, "ONE_THREAD_ENTRIES", 500)
    plan = TRVAETrainingPlan(model.module, lr=3e-3, gene_lr_scale=10.0)
    optimizer = plan.configure_optimizers()["optimizer"]
    largest = [max(p.numel() for p in g["params"]) for g in optimizer.param_groups]
    assert len(largest) == 4
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [3e-3, 3e-2]
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(
        [p for p in model.module.parameters() if p.requires_grad]
    )
    threads, fused_adam = [], torch._fused_adam_
    monkeypatch.setattr(
        torch,
        "_fused_adam_",
        lambda *a, **k: threads.append(torch.get_num_threads()) or fused_adam(*a, **k),
    )
    start = {k: v.clone() for k, v in model.module.state_dict().items()}
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:

        def closure():  # as Lightning passes it: forward and backward inside the step
            optimizer.zero_grad()
            loss = sum(p.square().sum() for p in model.module.parameters())
            loss.backward()
            return loss

        loss = optimizer.step(closure)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
        model.module.load_state_dict(start)
    assert loss.requires_grad
    assert threads == [2 if n > 500 else 1 for n in largest]


def test_default_budget_is_in_optimiser_steps(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    model.train(batch_size=64, max_steps=12, enable_progress_bar=False)
    epoch_steps = steps_per_epoch(sim.n_obs, None, 64)
    assert epoch_steps == math.ceil(math.ceil(0.9 * 600) / 64) == 9
    trainer = model.trainer
    assert trainer.max_epochs == math.ceil(12 / epoch_steps) == 2  # from the step budget
    assert trainer.global_step == 12  # the step budget, not the epochs, ended the run
    plan = trainer.lightning_module
    assert plan.n_steps_kl_warmup == 3  # a quarter of the run
    assert plan.n_epochs_kl_warmup is None
    stopping = trainer.early_stopping_callback
    assert stopping.patience == 17  # 150 steps of 9 a epoch


def test_default_budget_scales_with_the_data():
    # small data: the optimiser's floor of steps; medium: 5 epochs; large: one epoch, every
    # cell seen once
    kang, medium, large = (steps_per_epoch(n, None, 128) for n in (1975, 50_000, 1_000_000))
    assert (kang, medium, large) == (14, 352, 7032)
    assert [step_budget(s) for s in (kang, medium, large)] == [MIN_STEPS, 5 * medium, 7032]
    assert steps_per_epoch(100, 1.0, 128) == 1


def test_explicit_max_epochs_has_nostep_budget(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False)
    assert model.trainer.max_steps == -1
    assert model.trainer.current_epoch == 2
    plan = model.trainer.lightning_module
    assert plan.n_steps_kl_warmup == min(KL_WARMUP_STEPS, math.ceil(2 * 9 / 4))


def test_user_kl_warmup_in_steps_is_kept(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    model.train(
        max_epochs=1, batch_size=64, plan_kwargs={"n_steps_kl_warmup": 7}, enable_progress_bar=False
    )
    plan = model.trainer.lightning_module
    assert plan.n_steps_kl_warmup == 7
    assert plan.n_epochs_kl_warmup is None
    assert model.history["kl_weight"].iloc[-1, 0] == 1.0  # reached after 7 of 9 steps


def test_available_cpus_respects_a_cgroup_quota(tmp_path, monkeypatch):
    affinity = len(os.sched_getaffinity(0))
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(_threads, "CGROUP_CPU_MAX", cpu_max)
    assert _threads.available_cpus() == affinity  # no cgroup file
    cpu_max.write_text("max 100000\n")
    assert _threads.available_cpus() == affinity
    cpu_max.write_text("50000 100000\n")  # half a CPU still gets one thread
    assert _threads.available_cpus() == 1
    cpu_max.write_text(f"{100000 * (affinity + 4)} 100000\n")
    assert _threads.available_cpus() == affinity


@pytest.mark.parametrize(("user", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_import_sets_omp_wait_policy_unless_the_user_did(user, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user is not None:
        env["OMP_WAIT_POLICY"] = user
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(sctrvae.__path__[0]), *sys.path])
    code = "import os, sctrvae; print(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_training_threads_use_every_usable_cpu_when_idle_threads_sleep(monkeypatch, tmp_path):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 4)
    monkeypatch.setattr(_threads, "PASSIVE_WAIT", True)
    proc = tmp_path / "loadavg"
    proc.write_text("9.0 9.0 9.0 9/300 12345\n")  # busy, and a load average that lags
    monkeypatch.setattr(_threads, "PROC_LOADAVG", proc)
    assert _threads.training_threads() == 4


def test_seeded_runs_use_every_usable_cpu_whatever_the_load(monkeypatch, tmp_path):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 4)
    monkeypatch.setattr(_threads, "PASSIVE_WAIT", False)
    proc = tmp_path / "loadavg"
    proc.write_text("3.5 2.0 1.0 9/300 12345\n")
    monkeypatch.setattr(_threads, "PROC_LOADAVG", proc)
    assert _threads.training_threads(reproducible=True) == 4
    assert _threads.training_threads() == 1


@pytest.mark.parametrize(("running", "expected"), [(1, 4), (2, 3), (4, 1), (9, 1)])
def test_spinning_threads_leave_the_cores_busy_now_alone(tmp_path, monkeypatch, running, expected):
    monkeypatch.setattr(_threads, "available_cpus", lambda: 4)
    monkeypatch.setattr(_threads, "PASSIVE_WAIT", False)
    proc = tmp_path / "loadavg"
    # a load average left by this process's previous work does not count, only running tasks
    proc.write_text(f"3.5 2.0 1.0 {running}/300 12345\n")
    monkeypatch.setattr(_threads, "PROC_LOADAVG", proc)
    assert _threads.training_threads() == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("import sctrvae", "True"), ("import torch, sctrvae", "False")],
)
def test_passive_wait_is_known_only_when_sctrvae_loads_before_torch(code, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(sctrvae.__path__[0]), *sys.path])
    code += "; from sctrvae import _threads; print(_threads.PASSIVE_WAIT)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == expected


def threads_during_training_from_two() -> tuple[set[int], int]:
    """Torch threads seen at each training step, and after train(), for a caller at 2 threads."""
    seen = []

    class RecordThreads(pl.Callback):
        def on_train_batch_start(self, *args):
            seen.append(torch.get_num_threads())

    adata = sctrvae.datasets.simulate(n_cells=200, n_genes=20, seed=0)
    TRVAEModel.setup_anndata(adata, condition_key="condition")
    model = TRVAEModel(adata, n_hidden=8, n_latent=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # also what a scanpy call leaves behind on a 2-core machine
    try:
        model.train(max_epochs=1, enable_progress_bar=False, callbacks=[RecordThreads()])
        return set(seen), torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_train_uses_its_thread_choice_and_restores_the_callers(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(scvi.settings, "_num_threads", None)
    monkeypatch.setattr(_threads, "training_threads", lambda reproducible: 1)
    assert threads_during_training_from_two() == ({1}, 2)


@pytest.mark.parametrize("setting", ["env", "scvi"])
def test_the_users_thread_count_holds_even_after_something_else_changed_it(monkeypatch, setting):
    # numba (scanpy) shares torch's OpenMP runtime and raises its thread count when it runs
    if setting == "env":
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setattr(scvi.settings, "_num_threads", None)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setattr(scvi.settings, "_num_threads", 1)
    assert threads_during_training_from_two() == ({1}, 2)


def test_cosine_factor_warms_up_then_reaches_zero_at_the_last_step():
    total, warmup = 100, 10
    factors = [cosine_lr_factor(step, total, warmup) for step in range(total + 1)]
    assert np.all(np.diff(factors[: warmup + 1]) > 0)  # linear warm-up
    assert 0 < factors[0] < 0.1
    assert factors[warmup] == 1.0
    assert np.all(np.diff(factors[warmup:]) < 0)  # then decays at every step
    assert factors[total // 2 + warmup // 2] == pytest.approx(0.5)
    assert factors[total - 1] < 1e-3  # the last step is taken at almost no learning rate
    assert factors[total] == 0.0
    assert cosine_lr_factor(total + 5, total, warmup) == 0.0  # past the budget: stays at 0
    assert cosine_lr_factor(0, 1) == 1.0  # a single step, no warm-up


class LearningRates(pl.Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, *args):
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def test_the_default_schedule_ends_where_the_budget_ends(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    recorder = LearningRates()
    model.train(batch_size=64, max_steps=40, callbacks=[recorder], enable_progress_bar=False)
    lrs = np.array(recorder.lrs)[:, 0]
    assert lrs.size == model.trainer.global_step == 40
    assert lrs.max() == pytest.approx(DEFAULT_LR)
    assert lrs[0] < lrs[1] < lrs.max()  # warm-up over the first 2 steps (5 % of 40)
    assert lrs[-1] < 0.01 * DEFAULT_LR
    assert model.trainer.optimizers[0].param_groups[0]["lr"] == 0.0
    plan = model.trainer.lightning_module
    assert (plan.lr_schedule, plan.lr_warmup_steps) == ("cosine", 2)


def test_the_schedule_spans_max_epochs_when_there_is_no_step_budget(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    recorder = LearningRates()
    model.train(max_epochs=3, batch_size=64, callbacks=[recorder], enable_progress_bar=False)
    assert len(recorder.lrs) == 27  # 3 epochs of 9 steps
    assert recorder.lrs[-1][0] < 0.01 * DEFAULT_LR


def test_plateau_schedule_replaces_the_cosine_and_both_are_refused(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    plan = {"reduce_lr_on_plateau": True, "lr_scheduler_metric": "elbo_train"}
    model.train(max_epochs=2, batch_size=64, plan_kwargs=plan, enable_progress_bar=False)
    assert model.trainer.lightning_module.lr_schedule is None
    # the plateau schedule steers the optimiser that trains (with its per-gene group)
    (config,) = model.trainer.lr_scheduler_configs
    assert config.scheduler.optimizer is model.trainer.optimizers[0]
    assert len(model.trainer.optimizers[0].param_groups) == 2
    with pytest.raises(ValueError, match="not both"):
        TRVAETrainingPlan(model.module, lr_schedule="cosine", reduce_lr_on_plateau=True)
    with pytest.raises(ValueError, match="lr_schedule"):
        TRVAETrainingPlan(model.module, lr_schedule="linear")


def test_per_gene_parameters_train_at_a_larger_rate(sim):
    TRVAEModel.setup_anndata(sim, condition_key="condition")
    model = TRVAEModel(sim, n_hidden=16, n_latent=3)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    rest, gene = model.trainer.optimizers[0].param_groups
    assert gene["initial_lr"] == GENE_LR_SCALE * rest["initial_lr"] == GENE_LR_SCALE * DEFAULT_LR
    names = {id(p): n for n, p in model.module.named_parameters()}
    assert {names[id(p)] for p in gene["params"]} == set(GENE_PARAMETERS)
    assert len(rest["params"]) + len(gene["params"]) == len(names)
    assert model.trainer.optimizers[0].defaults["fused"] is True
