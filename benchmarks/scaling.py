"""Data-parallel scaling: steps/s and tokens/s of a char LSTM language model (truncated BPTT)
and a TCN (adding problem) on 1, 2, 4, ... devices (``seqjax.train.fit(mesh=...)``).

Each device count runs in its own subprocess (the forced host device count must be set before
JAX starts). On CPU the devices are forced host devices sharing the same cores, so the numbers
only prove that it runs; on a GPU host they are real.

    python benchmarks/scaling.py                      # 1, 2, 4 devices
    python benchmarks/scaling.py --devices 1,2,4,8 --steps 50 --batch-size 64
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from seqjax.cli import positive_int

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import numpy as np
import jax
from seqjax.data import get_task
from seqjax.models.lm import LanguageModel
from seqjax.models import SequenceModel
from seqjax.train import fit, make_mesh, make_optimizer, task_loss_fn
from seqjax.train.tbptt import TokenStreams, make_tbptt_loss_fn

n, steps, batch_size, seq_len, hidden = map(int, sys.argv[1:6])
mesh = make_mesh(n)
rows = []

def record(arch, res):
    rows.append({"arch": arch, "devices": n, "platform": jax.devices()[0].platform,
                 "steps_per_s": res.steps_per_s,
                 "tokens_per_s": res.steps_per_s * batch_size * seq_len,
                 "final_loss": res.history[-1]["loss"]})

# A char-level LSTM language model trained with truncated BPTT (synthetic 65-symbol stream,
# so the benchmark needs no data directory); the carry is sharded with the batch.
ids = np.random.default_rng(0).integers(0, 65, batch_size * seq_len * (steps + 1))
lm = LanguageModel("lstm", 65, embed_size=64, hidden_size=hidden, num_layers=2, backend="scan")
streams = TokenStreams(ids, batch_size, seq_len)
record("char-lstm-lm", fit(params=lm.init(jax.random.PRNGKey(0)),
                           loss_fn=make_tbptt_loss_fn(lm), optimizer=make_optimizer("adam", 1e-3),
                           train_batches=streams.batch, num_steps=steps, run_dir=None,
                           progress=False, log_every=steps, extra=lm.initial_carry(batch_size),
                           mesh=mesh))

# A TCN on the adding problem.
task = get_task("adding", seq_len=seq_len)
tcn = SequenceModel("tcn", input_size=task.input_size, output_size=task.output_size,
                    hidden_size=hidden, num_layers=4, kernel_size=7)
batches = [task.train_batch(i, batch_size, 0) for i in range(steps)]
record("tcn-adding", fit(params=tcn.init(jax.random.PRNGKey(0)), loss_fn=task_loss_fn(tcn, task),
                         optimizer=make_optimizer("adam", 1e-3), train_batches=lambda i: batches[i],
                         num_steps=steps, run_dir=None, progress=False, log_every=steps,
                         mesh=mesh))
print(json.dumps(rows))
"""


def run(n: int, args: argparse.Namespace) -> list[dict]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if env.get("JAX_PLATFORMS", "cpu") == "cpu" and not args.no_force:
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={n}").strip()
    cmd = [sys.executable, "-c", CHILD, str(n), str(args.steps), str(args.batch_size),
           str(args.seq_len), str(args.hidden)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{n} devices failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", default="1,2,4", help="comma-separated device counts")
    ap.add_argument("--steps", type=positive_int, default=20)
    ap.add_argument("--batch-size", type=positive_int, default=32, help="global batch size")
    ap.add_argument("--seq-len", type=positive_int, default=100)
    ap.add_argument("--hidden", type=positive_int, default=64)
    ap.add_argument("--no-force", action="store_true",
                    help="do not force host devices on CPU (use the real device count)")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)
    rows = []
    print(f"{'arch':<5} {'devices':>7} {'platform':>8} {'steps/s':>9} {'tokens/s':>11}")
    for n in (int(x) for x in args.devices.split(",")):
        for r in run(n, args):
            rows.append(r)
            print(f"{r['arch']:<5} {r['devices']:>7} {r['platform']:>8} "
                  f"{r['steps_per_s']:>9.2f} {r['tokens_per_s']:>11.0f}", flush=True)
    if rows and rows[0]["platform"] == "cpu":
        print("\nCPU with forced host devices: these devices share the same cores, so the "
              "numbers only prove that data-parallel training runs; they are not a scaling "
              "measurement.")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
