"""Tests of seqjax.train: optimisers, the train step, fit, checkpoints and exact resume.

The model everywhere is linear regression, ``pred = x @ w + b`` with the mean squared error,
whose optimum and gradients are known in closed form; a variant drops examples with a mask drawn
from the step key, so resume tests also cover the randomness.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.train import (
    NonFiniteLossError,
    TrainState,
    fit,
    latest_step,
    load_history,
    make_eval_fn,
    make_optimizer,
    make_schedule,
    make_train_step,
    plot_curves,
    restore_checkpoint,
)

N, D = 64, 4
TESTS_DIR = Path(__file__).resolve().parent


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, D)).astype(np.float32)
    y = (x @ np.array([1.5, -2.0, 0.5, 0.0]) + 0.3 + 0.5 * rng.normal(size=N)).astype(np.float32)
    return x, y


X, Y = _data()


def init_params() -> dict[str, jax.Array]:
    return {"w": jnp.zeros((D,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def mse_loss(params, batch, key, train):
    """Plain MSE; ``key`` and ``train`` unused."""
    r = batch["x"] @ params["w"] + params["b"] - batch["y"]
    return jnp.mean(r**2), {"mae": jnp.mean(jnp.abs(r))}


def dropout_loss(params, batch, key, train):
    """MSE over a random 75% of the examples (drawn from the step key) when training."""
    r = batch["x"] @ params["w"] + params["b"] - batch["y"]
    keep = jax.random.bernoulli(key, 0.75, r.shape) if train else jnp.ones(r.shape, bool)
    return jnp.sum(jnp.where(keep, r**2, 0.0)) / jnp.maximum(keep.sum(), 1), {}


def minibatches(i: int) -> dict[str, np.ndarray]:
    """Deterministic minibatch of 16 examples for step index ``i``."""
    idx = np.random.default_rng(1000 + i).choice(N, size=16, replace=False)
    return {"x": X[idx], "y": Y[idx], "i": np.int32(i)}


def full_batch(i: int) -> dict[str, np.ndarray]:
    return {"x": X, "y": Y, "i": np.int32(i)}


def lstsq_loss() -> float:
    a = np.concatenate([X, np.ones((N, 1), np.float32)], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(a, Y.astype(np.float64), rcond=None)[0]
    return float(np.mean((a @ coef - Y) ** 2))


def np_loss(params) -> float:
    w, b = np.asarray(params["w"], np.float64), float(params["b"])
    return float(np.mean((X @ w + b - Y) ** 2))


def assert_trees_equal(a, b) -> None:
    leaves_a, tree_a = jax.tree_util.tree_flatten(a)
    leaves_b, tree_b = jax.tree_util.tree_flatten(b)
    assert tree_a == tree_b
    for u, v in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def without_time(history):
    return [{k: v for k, v in row.items() if k != "time"} for row in history]


# ---------------------------------------------------------------------------------------------
# Optimisers and the train step.


@pytest.mark.parametrize(
    "name, lr, steps, kwargs",
    [("adam", 0.1, 400, {"schedule": "cosine", "total_steps": 400}),
     ("sgd", 0.1, 200, {"momentum": 0.5})],
)
def test_linear_regression_reaches_least_squares(name, lr, steps, kwargs):
    result = fit(params=init_params(), loss_fn=mse_loss,
                 optimizer=make_optimizer(name, lr, **kwargs), train_batches=full_batch,
                 num_steps=steps, run_dir=None, progress=False)
    best = lstsq_loss()
    assert np_loss(init_params()) > 5 * best  # the problem is not trivial
    assert np_loss(result.state.params) == pytest.approx(best, rel=1e-4)
    assert int(result.state.step) == steps
    assert result.history[-1]["loss"] == pytest.approx(best, rel=1e-4)


def hand_gradient(w: np.ndarray, b: float) -> tuple[np.ndarray, float]:
    r = X.astype(np.float64) @ w + b - Y
    return 2.0 / N * X.T.astype(np.float64) @ r, 2.0 / N * r.sum()


@pytest.mark.parametrize("clip_ratio", [0.25, 4.0])
def test_sgd_step_with_clipping_matches_hand_computation(clip_ratio):
    w0 = np.array([0.5, -0.25, 1.0, 2.0], np.float32)
    b0 = np.float32(-1.0)
    gw, gb = hand_gradient(w0.astype(np.float64), float(b0))
    norm = math.sqrt(float(gw @ gw) + gb**2)
    clip, lr = clip_ratio * norm, 0.1

    def one_step(optimizer):
        state = TrainState.create({"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, optimizer, 0)
        state, metrics = make_train_step(mse_loss, optimizer)(state, full_batch(0))
        return state, jax.device_get(metrics)

    clipped, metrics = one_step(make_optimizer("sgd", lr, clip_norm=clip))
    plain, plain_metrics = one_step(make_optimizer("sgd", lr))
    factor = min(1.0, clip / norm)
    np.testing.assert_allclose(clipped.params["w"], w0 - lr * gw * factor, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(clipped.params["b"], b0 - lr * gb * factor, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.params["w"], w0 - lr * gw, rtol=1e-5, atol=1e-6)
    # grad_norm is the norm of the raw gradient, before clipping, in both runs.
    assert metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert plain_metrics["grad_norm"] == pytest.approx(norm, rel=1e-5)
    assert metrics["lr"] == pytest.approx(lr)

    if clip_ratio < 1:
        assert not np.allclose(clipped.params["w"], plain.params["w"], rtol=1e-3)
        step = np.concatenate([np.asarray(clipped.params["w"]) - w0,
                               [float(clipped.params["b"]) - b0]])
        assert np.linalg.norm(step) == pytest.approx(lr * clip, rel=1e-4)
    else:
        np.testing.assert_array_equal(clipped.params["w"], plain.params["w"])


def test_sgd_step_with_value_clipping_matches_hand_computation():
    # Per-component clipping (the NTM/DNC papers' [-10, 10]), at a bound inside the gradient.
    w0 = np.array([0.5, -0.25, 1.0, 2.0], np.float32)
    b0 = np.float32(-1.0)
    gw, gb = hand_gradient(w0.astype(np.float64), float(b0))
    bound = 0.5 * float(np.abs(gw).max())
    assert np.abs(gw).min() < bound  # some components are clipped, some are not
    lr = 0.1
    optimizer = make_optimizer("sgd", lr, clip_value=bound)
    state = TrainState.create({"w": jnp.asarray(w0), "b": jnp.asarray(b0)}, optimizer, 0)
    state, _ = make_train_step(mse_loss, optimizer)(state, full_batch(0))
    np.testing.assert_allclose(state.params["w"], w0 - lr * np.clip(gw, -bound, bound),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.params["b"], b0 - lr * np.clip(gb, -bound, bound),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="clip_value"):
        make_optimizer("sgd", clip_value=-1.0)


def test_train_step_metrics_and_state():
    optimizer = make_optimizer("adam", 1e-2)
    params = init_params()
    state = TrainState.create(params, optimizer, jax.random.key(3))
    assert state.key.dtype == jnp.uint32 and state.step.dtype == jnp.int32
    step_fn = make_train_step(mse_loss, optimizer)
    state, metrics = step_fn(state, full_batch(0))
    loss, aux = mse_loss(params, full_batch(0), None, True)  # the caller's params are intact
    assert float(metrics["loss"]) == pytest.approx(float(loss), rel=1e-6)
    assert float(metrics["mae"]) == pytest.approx(float(aux["mae"]), rel=1e-6)
    assert int(state.step) == 1

    def bad_loss(params, batch, key, train):
        return mse_loss(params, batch, key, train)[0] * jnp.ones(2), {}

    with pytest.raises(ValueError, match="scalar"):
        make_train_step(bad_loss, optimizer)(TrainState.create(params, optimizer, 0),
                                             full_batch(0))
    with pytest.raises(ValueError, match="grad_norm"):
        make_train_step(lambda p, b, k, t: (mse_loss(p, b, k, t)[0], {"grad_norm": 0.0}),
                        optimizer)(TrainState.create(params, optimizer, 0), full_batch(0))



def test_train_step_grad_hook_joins_metrics():
    optimizer = make_optimizer("sgd", 0.1)
    params = init_params()
    step_fn = make_train_step(mse_loss, optimizer, donate=False,
                              grad_hook=lambda g: {"w_norm": jnp.linalg.norm(g["w"])})
    _, metrics = step_fn(TrainState.create(params, optimizer, 0), full_batch(0))
    plain = make_train_step(mse_loss, optimizer, donate=False)
    _, plain_metrics = plain(TrainState.create(params, optimizer, 0), full_batch(0))
    assert float(metrics["loss"]) == float(plain_metrics["loss"])
    assert 0.0 < float(metrics["w_norm"]) <= float(metrics["grad_norm"]) * (1 + 1e-6)
    for name in ("grad_norm", "mae"):  # reserved, or already in aux
        with pytest.raises(ValueError, match="grad_hook"):
            make_train_step(mse_loss, optimizer, grad_hook=lambda g, n=name: {n: 0.0})(
                TrainState.create(params, optimizer, 0), full_batch(0))

def test_every_optimizer_trains():
    for name in ("adam", "adamw", "rmsprop", "rmsprop-torch", "sgd"):
        optimizer = make_optimizer(name, 0.01, clip_norm=1.0, weight_decay=1e-3)
        state = TrainState.create(init_params(), optimizer, 0)
        step_fn = make_train_step(mse_loss, optimizer)  # donates: needs distinct buffers
        for i in range(3):
            state, metrics = step_fn(state, full_batch(i))
        assert np.isfinite(float(metrics["loss"]))
        assert np_loss(state.params) < np_loss(init_params()), name


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_rmsprop_torch_matches_pytorch(momentum):
    """``"rmsprop-torch"`` against ``torch.optim.RMSprop`` itself, on gradients of mixed scale
    (1e-7 to 1): where optax's ``rmsprop`` (eps inside the square root, decay 0.9) differs."""
    import torch  # the oracle: in the test extra, so CI has it; never skipped
    rng = np.random.default_rng(0)
    scale = np.array([1e-7, 1e-5, 1e-3, 1.0])
    grads = [rng.standard_normal(4) * scale for _ in range(12)]
    w0 = rng.standard_normal(4)
    p = torch.nn.Parameter(torch.tensor(w0, dtype=torch.float64))
    opt = torch.optim.RMSprop([p], lr=5e-4, momentum=momentum or 0.0)
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()

    def run(optimizer):
        w = jnp.asarray(w0, jnp.float64) if jax.config.jax_enable_x64 else jnp.asarray(w0)
        state = optimizer.init(w)
        for g in grads:
            u, state = optimizer.update(jnp.asarray(g, w.dtype), state, w)
            w = w + u
        return np.asarray(w, np.float64) - w0

    want = p.detach().numpy() - w0  # the displacement: float32 cannot hold w0 + 1e-9 steps
    got = run(make_optimizer("rmsprop-torch", 5e-4, momentum=momentum))
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-9)
    optax_default = run(make_optimizer("rmsprop", 5e-4, momentum=momentum))
    assert np.max(np.abs(optax_default[:2] - want[:2])) > 0.5 * np.max(np.abs(want[:2]))


def test_schedules():
    cos = make_schedule(1.0, "cosine", total_steps=10, warmup_steps=2)
    np.testing.assert_allclose([cos(0), cos(1), cos(2), cos(6), cos(10)],
                               [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)
    step = make_schedule(1.0, "step", decay_steps=3, decay_rate=0.1)
    np.testing.assert_allclose([step(0), step(2), step(3), step(6)], [1.0, 1.0, 0.1, 0.01],
                               rtol=1e-6)
    lin = make_schedule(2.0, "linear", total_steps=4)
    np.testing.assert_allclose([lin(0), lin(2), lin(4)], [2.0, 1.0, 0.0], atol=1e-6)
    assert make_schedule(0.3) == 0.3


def test_bad_optimizer_arguments():
    with pytest.raises(ValueError, match=r"unknown optimizer 'adagrad'.*adam, adamw, rmsprop, "
                                         r"rmsprop-torch, sgd"):
        make_optimizer("adagrad")
    with pytest.raises(ValueError, match="unknown schedule 'cosin'"):
        make_optimizer("adam", schedule="cosin")
    with pytest.raises(ValueError, match="total_steps"):
        make_optimizer("adam", schedule="cosine")
    with pytest.raises(ValueError, match="unknown plateau keys \\['patient'\\]"):
        make_optimizer("adam", plateau={"patient": 3})
    with pytest.raises(ValueError, match="momentum"):
        make_optimizer("adam", momentum=0.9)
    with pytest.raises(ValueError, match="clip_norm"):
        make_optimizer("sgd", clip_norm=0.0)


def test_plateau_lowers_learning_rate_when_loss_stalls():
    def stalled_loss(params, batch, key, train):
        # value 1.0 whatever w is, gradient 1: only the learning rate moves w.
        w = params["w"]
        return 1.0 + jnp.sum(w - jax.lax.stop_gradient(w)), {}

    def run(plateau):
        result = fit(params={"w": jnp.zeros(())}, loss_fn=stalled_loss,
                     optimizer=make_optimizer("sgd", 0.1, plateau=plateau),
                     train_batches=full_batch, num_steps=10, run_dir=None, log_every=1,
                     progress=False)
        return result, [row["lr"] for row in result.history]

    result, lrs = run({"factor": 0.5, "patience": 3})
    assert lrs[0] == pytest.approx(0.1)
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] < 0.1 / 2
    # the scale acts on the update: w moved by exactly the sum of the rates used.
    assert float(result.state.params["w"]) == pytest.approx(-sum(lrs), rel=1e-5)
    _, constant = run(None)
    assert constant == pytest.approx([0.1] * 10)


# ---------------------------------------------------------------------------------------------
# fit: files, evaluation, plots.


def test_fit_writes_config_and_metrics(tmp_path):
    run_dir = tmp_path / "run"
    config = {"model": "linear", "lr": 0.05, "sizes": [1, 2], "path": tmp_path}
    eval_fn = make_eval_fn(mse_loss, [full_batch(0)])
    result = fit(params=init_params(), loss_fn=mse_loss, optimizer=make_optimizer("adam", 0.05),
                 train_batches=minibatches, num_steps=10, run_dir=run_dir, eval_fn=eval_fn,
                 eval_every=4, log_every=3, config=config, progress=True, desc="test")
    assert json.loads((run_dir / "config.json").read_text()) == {**config, "path": str(tmp_path)}
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert rows == result.history == load_history(run_dir)
    train = [r for r in rows if r["split"] == "train"]
    valid = [r for r in rows if r["split"] == "valid"]
    assert [r["step"] for r in train] == [3, 6, 9, 10]
    assert [r["step"] for r in valid] == [4, 8, 10]
    assert list(train[0])[:4] == ["step", "split", "loss", "grad_norm"]
    assert set(train[0]) == {"step", "split", "loss", "grad_norm", "lr", "mae", "time"}
    assert set(valid[0]) == {"step", "split", "loss", "mae", "time"}
    times = [r["time"] for r in rows]
    assert times == sorted(times)
    # the valid loss is the full-data loss of the params after that step.
    assert valid[-1]["loss"] == pytest.approx(np_loss(result.state.params), rel=1e-5)
    assert latest_step(run_dir) == 10
    assert result.steps_per_s > 0 and result.wall_s > 0

    with pytest.raises(FileExistsError, match="resume=True"):
        fit(params=init_params(), loss_fn=mse_loss, optimizer=make_optimizer("adam"),
            train_batches=minibatches, num_steps=2, run_dir=run_dir, progress=False)
    again = fit(params=init_params(), loss_fn=mse_loss, optimizer=make_optimizer("adam"),
                train_batches=minibatches, num_steps=2, run_dir=run_dir, progress=False,
                overwrite=True)
    assert [r["step"] for r in load_history(run_dir)] == [2] == [r["step"] for r in again.history]
    assert latest_step(run_dir) == 2


def test_make_eval_fn_averages_batches():
    batches = [minibatches(i) for i in range(3)]
    params = {"w": jnp.ones((D,)), "b": jnp.asarray(0.5)}
    expected = np.mean([float(mse_loss(params, b, None, False)[0]) for b in batches])
    assert make_eval_fn(mse_loss, batches)(params)["loss"] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="empty"):
        make_eval_fn(mse_loss, [])


def test_plot_curves(tmp_path):
    hist = [{"step": s, "split": "train", "loss": 1.0 / s} for s in range(1, 6)]
    hist += [{"step": s, "split": "valid", "loss": 1.2 / s} for s in (2, 4)]
    out = plot_curves({"a": hist, "b": hist[:3]}, "loss", tmp_path / "sub" / "curves.png",
                      baseline=0.5, logy=True)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="acc"):
        plot_curves({"a": hist}, "acc", tmp_path / "x.png")


# ---------------------------------------------------------------------------------------------
# Checkpoints, resume, failures.


def _resume_kwargs(**overrides):
    kwargs = {
        "params": init_params(), "loss_fn": dropout_loss,
        "optimizer": make_optimizer("adam", 0.05, clip_norm=1.0, schedule="cosine",
                                    total_steps=12, plateau={"patience": 2}),
        "train_batches": minibatches, "num_steps": 12, "seed": 7, "checkpoint_every": 4,
        "log_every": 1, "eval_fn": make_eval_fn(dropout_loss, [full_batch(0)]),
        "eval_every": 3, "progress": False, "max_to_keep": 3,
    }
    kwargs.update(overrides)
    return kwargs


def test_resume_is_bit_for_bit(tmp_path):
    full = fit(run_dir=tmp_path / "full", **_resume_kwargs())

    parts = tmp_path / "parts"
    fit(run_dir=parts, **_resume_kwargs(num_steps=6))  # checkpoints 4 and 6
    assert latest_step(parts) == 6
    fit(run_dir=parts, resume=True, **_resume_kwargs(num_steps=9))  # 8 and 9
    # a crash after step 9 was logged but before its checkpoint: resume from 8 redoes step 9.
    import shutil

    shutil.rmtree(parts / "checkpoints" / "9")
    resumed = fit(run_dir=parts, resume=True, **_resume_kwargs())
    assert resumed.start_step == 8

    assert_trees_equal(resumed.state, full.state)
    # history and metrics.jsonl continue without duplicates: the rows of steps 1..12 once each.
    assert [r["step"] for r in resumed.history if r["split"] == "train"] == list(range(1, 13))
    assert load_history(parts) == resumed.history
    assert without_time(resumed.history) == without_time(full.history)
    # the randomness is really used: another seed gives other params.
    other = fit(run_dir=None, **_resume_kwargs(seed=8, checkpoint_every=0))
    assert not np.array_equal(other.state.params["w"], full.state.params["w"])


def test_keep_best_selects_the_best_validation_params_across_a_resume(tmp_path):
    """keep_best returns the params of the best "valid" row: the same params an uninterrupted
    run had at that step (checked by re-running to it), also when the run was cut and resumed
    after that step, and with a large learning rate the best is not the last."""
    kwargs = _resume_kwargs(optimizer=make_optimizer("sgd", 0.35), keep_best=("loss", "min"),
                            eval_every=1)
    full = fit(run_dir=tmp_path / "full", **kwargs)
    valid = [(r["step"], r["loss"]) for r in full.history if r["split"] == "valid"]
    best_step, best_loss = min(valid, key=lambda sv: sv[1])
    assert (full.best_step, full.best_value) == (best_step, best_loss)
    assert best_step != 12, valid  # the test means something only if the last is not the best
    upto = fit(run_dir=None, **{**kwargs, "num_steps": best_step, "keep_best": None})
    assert_trees_equal(full.best_params, upto.state.params)
    assert abs(np_loss(full.best_params) - best_loss) < 1e-5

    parts = tmp_path / "parts"
    fit(run_dir=parts, **{**kwargs, "num_steps": 8})
    resumed = fit(run_dir=parts, resume=True, **kwargs)
    assert (resumed.best_step, resumed.best_value) == (best_step, best_loss)
    assert_trees_equal(resumed.best_params, full.best_params)
    assert sorted(p.name for p in (parts / "best").iterdir()) == [str(best_step)]
    with pytest.raises(ValueError, match="keep_best"):
        fit(run_dir=None, **{**kwargs, "eval_fn": None})


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    def exploding_loss(params, batch, key, train):
        loss, aux = mse_loss(params, batch, key, train)
        return jnp.where(batch["i"] >= 6, jnp.nan, loss), aux

    run_dir = tmp_path / "nan"
    optimizer = make_optimizer("sgd", 0.05)
    with pytest.raises(NonFiniteLossError, match="non-finite loss nan at step 7") as info:
        fit(params=init_params(), loss_fn=exploding_loss, optimizer=optimizer,
            train_batches=full_batch, num_steps=20, run_dir=run_dir, checkpoint_every=2,
            log_every=1, progress=False)
    err = info.value
    assert err.step == 7 and math.isnan(err.value) and err.last_checkpoint == 6
    assert "last good checkpoint: step 6" in str(err)
    assert latest_step(run_dir) == 6
    like = TrainState.create(init_params(), optimizer, 0)
    restored = restore_checkpoint(run_dir, like)
    assert int(restored.step) == 6
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
    clean = fit(params=init_params(), loss_fn=mse_loss, optimizer=optimizer,
                train_batches=full_batch, num_steps=6, run_dir=None, progress=False)
    assert_trees_equal(restored.params, clean.state.params)
    assert max(r["step"] for r in load_history(run_dir)) == 6


def test_interrupt_saves_last_completed_step(tmp_path):
    def interrupting_batches(i):
        if i == 7:  # requested while step 7 runs, i.e. after 6 completed steps and a 7th
            raise KeyboardInterrupt
        return minibatches(i)

    run_dir = tmp_path / "int"
    kwargs = _resume_kwargs(checkpoint_every=0, eval_fn=None)
    with pytest.raises(KeyboardInterrupt):
        fit(run_dir=run_dir, **{**kwargs, "train_batches": interrupting_batches})
    assert latest_step(run_dir) == 7  # no periodic checkpoints: this one is the exit save
    resumed = fit(run_dir=run_dir, resume=True, **kwargs)
    full = fit(run_dir=None, **kwargs)
    assert_trees_equal(resumed.state, full.state)


def killable_run(run_dir: str) -> None:
    """Target of the SIGKILL test's subprocess: a long, slowed-down run."""

    def slow_batches(i):
        time.sleep(0.01)
        return minibatches(i)

    fit(run_dir=run_dir, **_resume_kwargs(num_steps=100_000, train_batches=slow_batches,
                                          checkpoint_every=5, eval_fn=None))


def test_resume_after_sigkill(tmp_path):
    run_dir = tmp_path / "killed"
    code = (f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_train; "
            f"test_train.killable_run({str(run_dir)!r})")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        ckpts = run_dir / "checkpoints"
        while not (ckpts.is_dir() and any(p.name.isdigit() and int(p.name) >= 10
                                          for p in ckpts.iterdir())):
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 60 s"
            time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL

    k = latest_step(run_dir)
    assert k is not None and k >= 10 and k % 5 == 0
    n = k + 3
    resumed = fit(run_dir=run_dir, resume=True, **_resume_kwargs(num_steps=n, eval_fn=None,
                                                                 checkpoint_every=5))
    full = fit(run_dir=None, **_resume_kwargs(num_steps=n, eval_fn=None))
    assert resumed.start_step == k
    assert_trees_equal(resumed.state, full.state)
    assert [r["step"] for r in load_history(run_dir)] == list(range(1, n + 1))


# ---------------------------------------------------------------------------------------------
# steps_per_call and lazy metric syncs.


def test_steps_per_call_matches_single_steps():
    optimizer = make_optimizer("adam", 0.05, clip_norm=1.0)
    state0 = TrainState.create(init_params(), optimizer, 3)
    one = make_train_step(dropout_loss, optimizer, donate=False)
    three = make_train_step(dropout_loss, optimizer, donate=False, steps_per_call=3)
    state, losses = state0, []
    for i in range(3):
        state, m = one(state, minibatches(i))
        losses.append(float(m["loss"]))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *[minibatches(i) for i in range(3)])
    state3, m3 = three(state0, stacked)
    assert int(state3.step) == 3 and m3["loss"].shape == (3,)
    np.testing.assert_allclose(np.asarray(m3["loss"]), losses, rtol=1e-6)
    for u, v in zip(jax.tree.leaves(state3.params), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="steps_per_call"):
        make_train_step(dropout_loss, optimizer, steps_per_call=0)


def test_fit_steps_per_call_resumes_bit_for_bit(tmp_path):
    kwargs = _resume_kwargs(steps_per_call=2, checkpoint_every=4, eval_every=4, sync_every=3,
                            num_steps=9)
    full = fit(run_dir=tmp_path / "full", **kwargs)
    single = fit(run_dir=None, **_resume_kwargs(checkpoint_every=4, eval_every=4, num_steps=9))
    assert [r["step"] for r in full.history] == [r["step"] for r in single.history]
    for a, b in zip(full.history, single.history):
        assert a["split"] == b["split"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    parts = tmp_path / "parts"
    fit(run_dir=parts, **{**kwargs, "num_steps": 5})  # checkpoints 4 and 5
    shutil.rmtree(parts / "checkpoints" / "5")  # resume from 4: calls [4, 6), [6, 8), [8, 9)
    resumed = fit(run_dir=parts, resume=True, **kwargs)
    assert resumed.start_step == 4
    assert_trees_equal(resumed.state, full.state)
    assert without_time(resumed.history) == without_time(full.history)
    with pytest.raises(ValueError, match="multiple"):
        fit(run_dir=None, **{**kwargs, "eval_every": 3})


def test_non_finite_loss_found_at_a_lazy_sync(tmp_path):
    def exploding_loss(params, batch, key, train):
        loss, aux = mse_loss(params, batch, key, train)
        return jnp.where(batch["i"] >= 6, jnp.nan, loss), aux

    run_dir = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="at step 7") as info:
        fit(params=init_params(), loss_fn=exploding_loss, optimizer=make_optimizer("sgd", 0.05),
            train_batches=full_batch, num_steps=40, run_dir=run_dir, checkpoint_every=6,
            log_every=2, sync_every=20, progress=False)
    assert info.value.last_checkpoint == 6 and latest_step(run_dir) == 6
    assert [r["step"] for r in load_history(run_dir)] == [2, 4, 6]
