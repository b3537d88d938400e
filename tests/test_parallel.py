"""Data-parallel and multi-host training (``seqjax.train.parallel`` and ``fit(mesh=...)``).

Every check runs in a subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(the flag must be set before JAX starts), writes its results as one JSON line, and the test
asserts on it.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

COMMON = """
import json, os, sys
import numpy as np
import jax, jax.numpy as jnp
from seqjax.data import get_task
from seqjax.models import SequenceModel
from seqjax.train import (TrainState, fit, make_mesh, make_optimizer, make_train_step,
                          replicate, restore_checkpoint, shard_batch, task_loss_fn)

TASK = get_task("adding", seq_len=20)
B = 8

def model_of(arch):
    return SequenceModel(arch, input_size=TASK.input_size, output_size=TASK.output_size,
                         hidden_size=8, num_layers=2 if arch == "tcn" else 1, kernel_size=3)

def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
"""


def run_child(tmp_path: Path, body: str, *, devices: int = 4, env: dict | None = None,
              timeout: float = 120) -> dict:
    script = tmp_path / "child.py"
    script.write_text(COMMON + textwrap.dedent(body))
    child_env = {**os.environ, "JAX_PLATFORMS": "cpu",
                 "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
                 "PYTHONPATH": str(ROOT), **(env or {})}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env=child_env, cwd=tmp_path, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(lines[-1])


@pytest.fixture(scope="module")
def single_host(tmp_path_factory) -> dict:
    """One child for the 4-device checks (JAX start-up is the main cost)."""
    tmp = tmp_path_factory.mktemp("parallel")
    return run_child(tmp, """
    out = {"devices": jax.device_count()}
    mesh = make_mesh(4)
    for arch in ("lstm", "tcn"):
        model = model_of(arch)
        params = model.init(jax.random.PRNGKey(0))
        opt = make_optimizer("adam", 1e-2, clip_norm=1.0)
        loss_fn = task_loss_fn(model, TASK)
        batch = TASK.train_batch(0, B, 0)
        one, m1 = make_train_step(loss_fn, opt)(TrainState.create(params, opt, 0), batch)
        state4 = replicate(TrainState.create(params, opt, 0), mesh)
        sharded = shard_batch(batch, mesh)
        four, m4 = make_train_step(loss_fn, opt, mesh=mesh)(state4, sharded)
        out[arch] = {
            "param_diff": max_diff(one.params, four.params),
            "opt_diff": max_diff(one.opt_state, four.opt_state),
            "loss_diff": abs(float(m1["loss"]) - float(m4["loss"])),
            "batch_devices": len(sharded.inputs.sharding.device_set),
            "batch_shard_rows": sharded.inputs.addressable_shards[0].data.shape[0],
            "params_replicated": all(x.sharding.is_fully_replicated
                                     for x in jax.tree.leaves(four.params)),
            "param_devices": len(jax.tree.leaves(four.params)[0].sharding.device_set),
        }
    try:
        shard_batch(TASK.train_batch(0, 6, 0), mesh)
        out["indivisible"] = None
    except ValueError as e:
        out["indivisible"] = str(e)
    try:
        make_mesh(5)
        out["too_many"] = None
    except ValueError as e:
        out["too_many"] = str(e)
    print(json.dumps(out))
    """)


@pytest.mark.parametrize("arch", ["lstm", "tcn"])
def test_step_on_4_devices_equals_1_device(single_host, arch):
    assert single_host["devices"] == 4
    r = single_host[arch]
    assert r["batch_devices"] == 4 and r["batch_shard_rows"] == 2  # 8 rows over 4 devices
    assert r["params_replicated"] and r["param_devices"] == 4
    assert r["param_diff"] < 1e-6, r
    assert r["opt_diff"] < 1e-6, r
    assert r["loss_diff"] < 1e-6, r


def test_indivisible_batch_names_both_numbers(single_host):
    msg = single_host["indivisible"]
    assert msg is not None
    assert "batch size 6" in msg and "device count 4" in msg


def test_mesh_larger_than_devices_is_an_error(single_host):
    msg = single_host["too_many"]
    assert msg is not None and "5" in msg and "4" in msg


def test_checkpoint_4_devices_restore_and_continue_on_1(tmp_path):
    r = run_child(tmp_path, """
    model = model_of("lstm")
    params = model.init(jax.random.PRNGKey(0))
    opt = make_optimizer("adam", 1e-2, clip_norm=1.0)
    kw = dict(params=params, loss_fn=task_loss_fn(model, TASK), optimizer=opt,
              train_batches=lambda i: TASK.train_batch(i, B, 0), seed=0, progress=False,
              log_every=1)
    ref = fit(num_steps=4, run_dir=None, **kw).state
    # 4 devices for 2 steps, checkpointed ...
    part = fit(num_steps=2, run_dir="run", checkpoint_every=1, mesh=make_mesh(4), **kw).state
    saved_devices = len(jax.tree.leaves(part.params)[0].sharding.device_set)
    # ... restored on 1 device (explicitly, and by resume), then continued to step 4
    like = TrainState.create(params, opt, 0)
    restored = restore_checkpoint("run", like)
    restored_devices = len(jax.tree.leaves(restored.params)[0].sharding.device_set)
    res = fit(num_steps=4, run_dir="run", resume=True, **kw)
    rows = [json.loads(l) for l in open("run/metrics.jsonl")]
    print(json.dumps({
        "saved_devices": saved_devices, "restored_devices": restored_devices,
        "restored_step": int(restored.step), "restore_diff": max_diff(restored.params, part.params),
        "start_step": res.start_step,
        "final_diff": max_diff(res.state.params, ref.params),
        "final_devices": len(jax.tree.leaves(res.state.params)[0].sharding.device_set),
        "steps_logged": [r["step"] for r in rows if r["split"] == "train"],
    }))
    """)
    assert r["saved_devices"] == 4 and r["restored_devices"] == 1 and r["final_devices"] == 1
    assert r["restored_step"] == 2 and r["restore_diff"] == 0.0
    assert r["start_step"] == 2
    assert r["steps_logged"] == [1, 2, 3, 4]
    assert r["final_diff"] < 1e-6, r


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


MULTI = """
import json, os, sys
from seqjax.train.parallel import initialize_distributed
initialize_distributed()  # from SEQJAX_COORDINATOR / SEQJAX_NUM_PROCESSES / SEQJAX_PROCESS_ID
import numpy as np
import jax
from seqjax.data import get_task
from seqjax.models import SequenceModel
from seqjax.train import fit, make_mesh, make_optimizer, task_loss_fn

TASK = get_task("adding", seq_len=20)
B = 8
pid, nproc = jax.process_index(), jax.process_count()
model = SequenceModel("lstm", input_size=TASK.input_size, output_size=TASK.output_size,
                      hidden_size=8)
params = model.init(jax.random.PRNGKey(0))
opt = make_optimizer("adam", 1e-2, clip_norm=1.0)
per = B // nproc
res = fit(params=params, loss_fn=task_loss_fn(model, TASK), optimizer=opt,
          train_batches=lambda i: jax.tree.map(lambda x: x[pid * per:(pid + 1) * per],
                                               TASK.train_batch(i, B, 0)),
          num_steps=3, run_dir=None, seed=0, progress=False, log_every=1, mesh=make_mesh())
local = [np.asarray(x.addressable_shards[0].data).ravel().tolist()
         for x in jax.tree.leaves(res.state.params)]
print(json.dumps({"pid": pid, "nproc": nproc, "devices": jax.device_count(),
                  "local_devices": jax.local_device_count(), "step": int(res.state.step),
                  "params": local, "loss": [r["loss"] for r in res.history]}))
"""


def test_two_processes_on_localhost_train_identically(tmp_path):
    script = tmp_path / "multi.py"
    script.write_text(MULTI)
    port = _free_port()
    procs = []
    for pid in range(2):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
               "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
               "SEQJAX_COORDINATOR": f"127.0.0.1:{port}", "SEQJAX_NUM_PROCESSES": "2",
               "SEQJAX_PROCESS_ID": str(pid)}
        procs.append(subprocess.Popen([sys.executable, str(script)], env=env, cwd=tmp_path,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0, err[-4000:]
            results.append(json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    a, b = results
    assert {a["pid"], b["pid"]} == {0, 1}
    assert a["nproc"] == b["nproc"] == 2
    assert a["devices"] == b["devices"] == 4 and a["local_devices"] == 2
    assert a["step"] == b["step"] == 3
    assert a["params"] == b["params"]
    assert a["loss"] == b["loss"] and len(a["loss"]) == 3


def test_tbptt_language_model_on_4_devices_equals_1_device(tmp_path):
    """fit(mesh=...) with a stateful loss: the TBPTT carry is sharded with the batch (each
    device keeps the carry of its own streams) and 4 steps equal the 1-device run."""
    out = run_child(tmp_path, """
    from seqjax.models.lm import LanguageModel
    from seqjax.train.tbptt import TokenStreams, make_tbptt_loss_fn
    ids = np.random.default_rng(0).integers(0, 11, 4000)
    model = LanguageModel("lstm", 11, embed_size=6, hidden_size=8, num_layers=2, backend="scan")
    params = model.init(jax.random.PRNGKey(0))
    streams = TokenStreams(ids, 8, 12)
    runs = {}
    for n in (1, 4):
        res = fit(params=params, loss_fn=make_tbptt_loss_fn(model),
                  optimizer=make_optimizer("adam", 1e-2, clip_norm=1.0),
                  train_batches=streams.batch, num_steps=4, run_dir=None, progress=False,
                  extra=model.initial_carry(8), mesh=None if n == 1 else make_mesh(n))
        runs[n] = res.state
    carry_leaf = jax.tree.leaves(runs[4].extra)[0]
    print(json.dumps({
        "param_diff": max_diff(runs[1].params, runs[4].params),
        "carry_diff": max_diff(runs[1].extra, runs[4].extra),
        "carry_devices": len(carry_leaf.sharding.device_set),
        "carry_shard_rows": carry_leaf.addressable_shards[0].data.shape[0],
    }))
    """)
    assert out["param_diff"] < 1e-5 and out["carry_diff"] < 1e-5, out
    assert out["carry_devices"] == 4 and out["carry_shard_rows"] == 2, out


def test_model_axis_splits_large_matrices_and_matches_1_device(tmp_path):
    """A (data=2, model=2) mesh: the embedding and output matrices (and their Adam moments) are
    split on the model axis, the rest replicated, and a step equals the 1-device step."""
    out = run_child(tmp_path, """
    from seqjax.models.lm import LanguageModel
    from seqjax.train.tbptt import TokenStreams, make_tbptt_loss_fn
    ids = np.random.default_rng(0).integers(0, 512, 5000)
    model = LanguageModel("gru", 512, embed_size=128, hidden_size=16, backend="scan")
    params = model.init(jax.random.PRNGKey(0))
    streams = TokenStreams(ids, 8, 10)
    runs = {}
    for mesh in (None, make_mesh(4, model=2)):
        res = fit(params=params, loss_fn=make_tbptt_loss_fn(model),
                  optimizer=make_optimizer("adam", 1e-2), train_batches=streams.batch,
                  num_steps=3, run_dir=None, progress=False, extra=model.initial_carry(8),
                  mesh=mesh)
        runs[mesh is None] = res.state
    state = runs[False]
    split = {jax.tree_util.keystr(p): list(x.addressable_shards[0].data.shape)
             for p, x in jax.tree_util.tree_leaves_with_path(state.params)
             if x.addressable_shards[0].data.shape != x.shape}
    print(json.dumps({"param_diff": max_diff(runs[True].params, state.params),
                      "split": split, "mesh": dict(make_mesh(4, model=2).shape)}))
    """)
    assert out["mesh"] == {"data": 2, "model": 2}
    assert out["param_diff"] < 1e-5, out
    assert out["split"] and all(512 // 2 in shape for shape in out["split"].values()), out
    assert any("embed" in k for k in out["split"]), out
