"""CPU benchmark: one full training step of the main job's models, seqjax against PyTorch.

A training step is forward, loss, backward and the optimiser update (Adam, with global-norm
clipping where the preset clips) of the adding task's TCN, LSTM, GRU and RNN
(``experiments/tcn_vs_rnn.py``), at the ``quick`` preset's sizes (T=200) and at the ``paper``
preset's (T=600). The same models and optimiser are written in PyTorch (locuslab's TCN:
weight-normed ``Conv1d`` + chomp; ``nn.LSTM``/``nn.GRU``/``nn.RNN`` + ``nn.Linear``). Both run
in one process, interleaved (each repetition times every contender once), on the same
pre-generated batches (batch generation is not timed); the table gives steps/s (median of the
repetitions) and the ratio seqjax / PyTorch (> 1: seqjax faster).

``seqjax xK`` rows time :func:`seqjax.train.make_train_step` with ``steps_per_call=K`` (K steps
in one jitted call: a ``lax.scan`` over K stacked batches); the plain row is one step per call.
The TCN gets no ``xK`` row: its convolutions run ~15x slower inside a loop on XLA:CPU.
The seqjax models run the main job's backend (``--backend auto``: the native loops for the LSTM
and GRU on CPU; until 2026-12-02 this script ran ``scan``). Each timed repetition follows
``--gap`` seconds idle (see ``rnn_cpu.py``). Absolute numbers depend on the machine and its load;
compare the ratios.

    python benchmarks/train_step.py            # quick and paper sizes, all models (~3 min)
    python benchmarks/train_step.py --quick    # quick sizes only (~1 min)
    python benchmarks/train_step.py --models tcn --sizes paper --reps 5
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))

import tcn_vs_rnn  # noqa: E402  (the main job's presets and model builder)

from seqjax.cli import non_negative_float, positive_int, tune_allocator  # noqa: E402
from seqjax.data import get_task  # noqa: E402
from seqjax.train import TrainState, make_train_step  # noqa: E402
from seqjax.train.tasks import task_loss_fn  # noqa: E402

# --------------------------------------------------------------------------------------------
# PyTorch models


class _Chomp(torch.nn.Module):
    def __init__(self, n: int):
        super().__init__()
        self.n = n

    def forward(self, x):
        return x[:, :, : -self.n].contiguous() if self.n else x


class _TorchTCN(torch.nn.Module):
    """locuslab/TCN's ``TemporalConvNet`` + linear readout on the last step's features."""

    def __init__(self, d_in: int, channels: int, levels: int, k: int, d_out: int):
        super().__init__()
        wn = torch.nn.utils.parametrizations.weight_norm
        self.blocks = torch.nn.ModuleList()
        for i in range(levels):
            c_in, dil = (d_in if i == 0 else channels), 2**i
            pad = (k - 1) * dil
            block = torch.nn.Module()
            block.net = torch.nn.Sequential(
                wn(torch.nn.Conv1d(c_in, channels, k, padding=pad, dilation=dil)), _Chomp(pad),
                torch.nn.ReLU(),
                wn(torch.nn.Conv1d(channels, channels, k, padding=pad, dilation=dil)),
                _Chomp(pad), torch.nn.ReLU())
            block.down = torch.nn.Conv1d(c_in, channels, 1) if c_in != channels else None
            self.blocks.append(block)
        self.readout = torch.nn.Linear(channels, d_out)

    def forward(self, x):  # x [B, T, D]
        h = x.transpose(1, 2)
        for b in self.blocks:
            res = h if b.down is None else b.down(h)
            h = torch.relu(b.net(h) + res)
        return self.readout(h[:, :, -1])


class _TorchRNN(torch.nn.Module):
    def __init__(self, arch: str, d_in: int, hidden: int, layers: int, d_out: int):
        super().__init__()
        cls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[arch]
        self.rnn = cls(d_in, hidden, num_layers=layers, batch_first=True)
        self.readout = torch.nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.readout(self.rnn(x)[0][:, -1])


def torch_step_fn(name, model, arch):
    """A PyTorch training step ``step(x, y)`` of the same model and optimiser."""
    if name == "tcn":
        net = _TorchTCN(model.input_size, model.hidden_size, model.num_layers, model.kernel_size,
                        model.output_size)
    else:
        net = _TorchRNN(name, model.input_size, model.hidden_size, model.num_layers,
                        model.output_size)
    assert arch.optimizer == "adam", arch.optimizer
    opt = torch.optim.Adam(net.parameters(), lr=arch.lr)

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((net(x)[:, 0] - y[:, 0]) ** 2)
        loss.backward()
        if arch.clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), arch.clip)
        opt.step()
        return loss

    return step


# --------------------------------------------------------------------------------------------


def bench_size(size: str, names: list[str], reps: int, steps: int, ks: list[int],
               backend: str = "auto", gap: float = 0.05) -> list[dict]:
    preset = tcn_vs_rnn.preset_for("adding", size)
    task = get_task("adding", seq_len=preset.seq_len)
    models = tcn_vs_rnn.build_models(task, preset, names, backend)
    bs = preset.batch_size
    n_batches = max([steps, *ks])
    batches = [task.train_batch(i, bs, 0) for i in range(n_batches)]
    jbatches = [jax.device_put(b) for b in batches]
    tbatches = [(torch.from_numpy(np.asarray(b.inputs)), torch.from_numpy(np.asarray(b.targets)))
                for b in batches]
    rows = []
    for name, model in models.items():
        arch = preset.arch(name)
        optimizer = tcn_vs_rnn.optimizer_for(preset, name)
        loss_fn = task_loss_fn(model, task)
        params = model.init(jax.random.PRNGKey(0))
        contenders = {}
        for k in [1, *([] if name == "tcn" else ks)]:  # a TCN inside a scan: ~15x slower
            step_fn = make_train_step(loss_fn, optimizer, steps_per_call=k)
            box = [TrainState.create(params, optimizer, 0)]
            if k == 1:
                def run(step_fn=step_fn, box=box):
                    for b in jbatches[:steps]:
                        box[0], m = step_fn(box[0], b)
                    jax.block_until_ready(box[0].params)
                contenders["seqjax"] = (run, steps)
            else:
                stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *jbatches[:k])
                calls = max(1, steps // k)

                def run(step_fn=step_fn, box=box, stacked=stacked, calls=calls):
                    for _ in range(calls):
                        box[0], m = step_fn(box[0], stacked)
                    jax.block_until_ready(box[0].params)
                contenders[f"seqjax x{k}"] = (run, calls * k)
        tstep = torch_step_fn(name, model, arch)

        def trun(tstep=tstep):
            for x, y in tbatches[:steps]:
                tstep(x, y)
        contenders["pytorch"] = (trun, steps)
        for fn, _ in contenders.values():  # warm-up: compiles
            fn()
        times = {c: [] for c in contenders}
        for _ in range(reps):
            for c, (fn, n) in contenders.items():
                time.sleep(gap)  # PyTorch's OpenMP workers spin a while after its last op
                t0 = time.perf_counter()
                fn()
                times[c].append((time.perf_counter() - t0) / n)
        med = {c: 1.0 / float(np.median(t)) for c, t in times.items()}
        for c, sps in med.items():
            rows.append({"size": size, "T": preset.seq_len, "model": name,
                         "hidden": model.hidden_size, "layers": model.num_layers,
                         "impl": c, "steps_per_s": sps, "vs_torch": sps / med["pytorch"]})
            print(f"  {size} {name} {c}: {sps:.1f} steps/s ({sps / med['pytorch']:.2f}x torch)",
                  flush=True)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="quick sizes only, 3 repetitions")
    ap.add_argument("--sizes", default=None, help="comma-separated from quick,paper")
    ap.add_argument("--models", default="tcn,lstm,gru,rnn")
    ap.add_argument("--reps", type=positive_int, default=None,
                    help="repetitions (median; default 3)")
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="steps per timed repetition (default 5, --quick 4)")
    ap.add_argument("--k", default="8", help="steps_per_call values to time besides 1 ('' none)")
    ap.add_argument("--threads", type=positive_int, default=min(2, len(os.sched_getaffinity(0))),
                    help="PyTorch intra-op threads (default: the cores this process may use, <= 2)")
    ap.add_argument("--backend", default="auto",
                    help="the seqjax models' recurrent backend (the main job's default: auto)")
    ap.add_argument("--gap", type=non_negative_float, default=0.05,
                    help="idle seconds before each timed repetition (see rnn_cpu.py)")
    ap.add_argument("--json", default="results/bench_train_step.json")
    ap.add_argument("--tune-malloc", action="store_true",
                    help="glibc malloc as the experiment scripts set it (seqjax.cli."
                         "tune_allocator), for every contender of this process")
    args = ap.parse_args(argv)
    if args.tune_malloc and not tune_allocator():
        raise SystemExit("--tune-malloc: not applied (not glibc, SEQJAX_TUNE_MALLOC=0 or "
                         "MALLOC_* set)")
    torch.set_num_threads(args.threads)
    sizes = (args.sizes or ("quick" if args.quick else "quick,paper")).split(",")
    reps = args.reps or 3
    steps = args.steps or (4 if args.quick else 5)
    ks = [int(k) for k in args.k.split(",") if k.strip()]
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    rows = []
    for size in sizes:
        rows += bench_size(size, names, reps, steps, ks, args.backend, args.gap)

    print(f"\nadding task, one training step (fwd + loss + bwd + Adam), CPU "
          f"({os.cpu_count()} cores), jax {jax.__version__}, torch {torch.__version__} "
          f"({args.threads} threads), median of {reps} x {steps} steps\n")
    print("| size | T | model | hidden x layers | implementation | steps/s | vs torch |")
    print("|---|---:|---|---|---|---:|---:|")
    for r in rows:
        print(f"| {r['size']} | {r['T']} | {r['model']} | {r['hidden']} x {r['layers']} | "
              f"{r['impl']} | {r['steps_per_s']:.1f} | {r['vs_torch']:.2f} |")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        meta = {"reps": reps, "steps": steps, "jax": jax.__version__, "torch": torch.__version__,
                "threads": args.threads, "backend": args.backend, "gap": args.gap,
                "cpu": platform.processor(), "cores": os.cpu_count(),
                "xla_flags": os.environ.get("XLA_FLAGS", "")}
        Path(args.json).write_text(json.dumps({"config": meta, "rows": rows}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
