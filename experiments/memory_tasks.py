"""Neural Turing Machine, Differentiable Neural Computer and LSTM on the NTM paper's
algorithmic tasks (Graves, Wayne & Danihelka 2014, section 4; Graves et al. 2016).

    python experiments/memory_tasks.py                          # copy, ntm + lstm, quick preset
    python experiments/memory_tasks.py --task recall --models ntm,dnc,lstm --steps 4000
    python experiments/memory_tasks.py --task copy --preset paper      # RMSProp, batch 1
    python experiments/memory_tasks.py --resume results/memory/copy/20261123-200000

Every model trains on the same deterministic batches. The run directory
``<out>/memory/<task>/<timestamp>/`` gets

* ``curves.png``: validation bits of error per sequence against training sequences seen (the
  NTM paper plots its learning curves against sequences seen too);
* ``table.md`` and ``results.json``: test metrics, the number of training sequences each model
  needed to get below ``--threshold`` bits of error per sequence, parameters and wall time;
* on ``copy``, a length-generalisation table: models trained on lengths 1-20 tested on exactly
  ``--eval-lengths`` (default 40, 80, 120), in ``table.md`` and ``results.json``;
* for NTM and DNC, ``<model>/heatmap.png`` (copy: ``heatmap_<L>.png`` for ``L`` = 20 and each
  ``--eval-lengths``): inputs, outputs and the write and read weightings over memory rows of one
  test sequence (as the NTM paper shows them);
* one sub-directory per model with ``config.json``, ``metrics.jsonl`` and orbax checkpoints:
  ``--resume`` continues an interrupted run from them.

Presets. ``quick`` (default): Adam 1e-3 with batches of 16, dropped to 1e-4 for the last quarter
of the steps (memory networks train with loss spikes; the drop keeps the final weights at a low
point), minutes per model on a laptop CPU.
``paper``: the NTM paper's RMSProp (learning rate 1e-4, momentum 0.9) on one sequence per
update, for as many sequences as its figures show. Both clip every gradient component to
``[-10, 10]`` as the NTM and DNC papers do. Model sizes are the papers': NTM with a 100-unit LSTM
controller and a 128 x 20 memory, one read and one write head, shifts -1..1; DNC with a 64-unit
LSTM controller, a 128 x 20 memory (128 rows, so that length-120 copies fit) and 4 read heads;
the LSTM baseline is the NTM paper's 3 layers of 256 units.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from seqjax.cli import (
    check_output_dir,
    comma_list,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.cli import read_run as cli_read_run
from seqjax.core.memory import DNC, NTM
from seqjax.data import get_task
from seqjax.models import MemoryModel, SequenceModel, param_count
from seqjax.train import (
    TrainState,
    check_checkpoint,
    fit_task,
    make_optimizer,
    make_task_evaluator,
    plot_curves,
)

#: ``--task`` -> the task's registry name in :func:`seqjax.data.get_task`.
TASKS = {
    "copy": "ntm-copy",
    "repeat-copy": "repeat-copy",
    "recall": "associative-recall",
    "sort": "priority-sort",
}
MODELS = ("ntm", "dnc", "lstm")


@dataclasses.dataclass(frozen=True)
class Preset:
    """Optimiser, run length and evaluation of a preset (model sizes are fixed, see above)."""

    steps: int
    batch_size: int
    optimizer: str
    lr: float
    momentum: float | None
    clip_value: float
    #: The learning rate drops 10x after this fraction of the steps (``None``: constant). NTMs
    #: and DNCs train with loss spikes; the drop keeps the final weights at the low point.
    decay_at: float | None
    eval_every: int
    eval_size: int
    eval_batch_size: int


PRESETS = {
    "quick": Preset(steps=8000, batch_size=16, optimizer="adam", lr=1e-3, momentum=None,
                    clip_value=10.0, decay_at=0.75, eval_every=500, eval_size=256,
                    eval_batch_size=128),
    "paper": Preset(steps=200_000, batch_size=1, optimizer="rmsprop", lr=1e-4, momentum=0.9,
                    clip_value=10.0, decay_at=None, eval_every=5000, eval_size=1000,
                    eval_batch_size=250),
}


def build_model(name: str, task: Any, remat: bool = False) -> Any:
    """The papers' model ``name`` for ``task`` (input and output sizes from the task)."""
    d, o = task.input_size, task.output_size
    if name == "ntm":
        return MemoryModel(NTM(d, controller_size=100, memory_size=128, word_size=20), o,
                           remat=remat)
    if name == "dnc":
        return MemoryModel(DNC(d, controller_size=64, memory_size=128, word_size=20,
                               num_reads=4), o, remat=remat)
    if name == "lstm":
        return SequenceModel("lstm", d, o, hidden_size=256, num_layers=3, backend="scan")
    raise ValueError(f"unknown model {name!r}; valid: {', '.join(MODELS)}")


def sequences_to_threshold(history: list[dict], threshold: float, batch_size: int) -> int | None:
    """Training sequences seen at the first validation with ``bit_errors < threshold``."""
    for row in history:
        if row.get("split") == "valid" and row.get("bit_errors", np.inf) < threshold:
            return int(row["step"]) * batch_size
    return None


def optimizer_for(preset: Preset):
    decay = {} if not preset.decay_at else {
        "schedule": "step", "decay_rate": 0.1,
        "decay_steps": max(1, round(preset.decay_at * preset.steps))}
    return make_optimizer(preset.optimizer, preset.lr, momentum=preset.momentum,
                          clip_value=preset.clip_value, total_steps=preset.steps, **decay)


def check_resumable(run_root: Path, models: dict[str, Any], preset: Preset) -> None:
    """Every model's newest checkpoint fits the model it resumes (checked before any training:
    one-line error naming the directory and the first mismatching parameter)."""
    for name, model in models.items():
        like = jax.eval_shape(lambda m=model: TrainState.create(
            m.init(jax.random.PRNGKey(0)), optimizer_for(preset), 0))
        check_checkpoint(run_root / name, like)


def run_model(name: str, model: Any, task: Any, preset: Preset, args: Any, run_dir: Path,
              resume: bool) -> tuple[dict[str, Any], list[dict], Any]:
    """Trains ``model``; returns ``(summary, history rows, final params)``."""
    optimizer = optimizer_for(preset)
    evaluate = make_task_evaluator(model, task, preset.eval_batch_size)
    config = {"model": name, "task": task.name, "preset": dataclasses.asdict(preset),
              "seed": args.seed}
    result = fit_task(
        model, task,
        params=model.init(jax.random.PRNGKey(args.seed)),
        optimizer=optimizer,
        batch_size=preset.batch_size,
        num_steps=preset.steps,
        run_dir=run_dir,
        seed=args.seed,
        evaluate=evaluate,
        eval_every=preset.eval_every,
        resume=resume,
        config=config,
        progress=not args.no_progress and sys.stderr.isatty(),
        desc=f"{task.name} {name}",
    )
    params = result.state.params
    test = evaluate(params, "test")
    out = {
        "test": test,
        "params": param_count(params),
        "wall_s": result.wall_s,
        "steps_per_s": result.steps_per_s,
        "sequences": preset.steps * preset.batch_size,
        "sequences_to_threshold": sequences_to_threshold(result.history, args.threshold,
                                                         preset.batch_size),
    }
    return out, result.history, params


def generalisation(model: Any, params: Any, task_name: str, lengths: list[int],
                   preset: Preset) -> dict[str, dict[str, float]]:
    """Test metrics of copies of exactly each length in ``lengths`` (training: 1-20)."""
    out = {}
    for length in lengths:
        task = get_task(task_name, eval_len=length, eval_size=preset.eval_size)
        evaluate = make_task_evaluator(model, task, min(preset.eval_batch_size, 64))
        out[str(length)] = evaluate(params, "test")
    return out


def plot_heatmap(model: Any, params: Any, task: Any, path: Path, title: str) -> Path:
    """Inputs, targets, outputs and the write/read weightings of the first test sequence."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    batch = next(iter(task.eval_batches("test", 1)))
    steps = int(batch.lengths[0])
    inputs = np.asarray(batch.inputs[:, :steps])
    logits, carries = model.trace(params, inputs)
    outputs = 1.0 / (1.0 + np.exp(-np.asarray(logits[0])))
    targets = np.asarray(batch.targets[0, :steps])
    write = np.asarray(carries.write_weights[0]).reshape(steps, -1, model.cell.memory_size)
    read = np.asarray(carries.read_weights[0])  # [T, R, N]
    write, read = write.sum(1), read.sum(1)  # [T, N] over heads
    used = np.flatnonzero((write.max(0) > 0.05) | (read.max(0) > 0.05))
    rows = slice(0, model.cell.memory_size) if used.size == 0 else slice(used[0], used[-1] + 1)
    where = f"rows {rows.start}-{rows.stop - 1}"
    panels = [("inputs", inputs[0]), ("targets (last channel: scored)", targets),
              ("outputs", outputs), (f"write weighting\n({where})", write[:, rows]),
              (f"read weighting\n(all heads, {where})", read[:, rows])]
    fig = Figure(figsize=(10, 2.2 * len(panels)))
    FigureCanvasAgg(fig)
    for i, (label, img) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        ax.imshow(img.T, aspect="auto", cmap="gray_r", interpolation="nearest")
        ax.set_ylabel(label, fontsize=8)
        ax.set_xticks([])
    ax.set_xlabel("time step")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path


def write_table(results: dict, path: Path) -> str:
    thr = results["threshold"]
    lines = [
        f"# {results['task']}: bits of error per test sequence (lower is better)",
        "",
        f"Preset {results['preset']}: {results['steps']} steps of {results['batch_size']} "
        f"sequences, {results['optimizer']} at {results['lr']:g}"
        + (f", 10x lower from step {round(results['decay_at'] * results['steps']) + 1}"
           if results["decay_at"] else "")
        + f". Always-zero predictor: {results['baseline']:.3g} bits.",
        "",
        f"| model | bit errors / seq | cost (bits) / seq | exact sequences | params "
        f"| sequences to < {thr} | wall s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["models"].items():
        t, need = r["test"], r["sequences_to_threshold"]
        lines.append(f"| {name} | {t['bit_errors']:.3g} | {t['cost_bits']:.3g} | "
                     f"{t['seq_accuracy']:.1%} | {r['params']:,} | "
                     f"{'not reached' if need is None else f'{need:,}'} | {r['wall_s']:.0f} |")
    gen = {n: r["generalisation"] for n, r in results["models"].items() if "generalisation" in r}
    if gen:
        lengths = list(next(iter(gen.values())))
        lines += ["", "Length generalisation (trained on lengths 1-20): bits of error per "
                  "sequence (exact sequences)", "",
                  "| model | " + " | ".join(f"L={n}" for n in lengths) + " |",
                  "|---|" + "---:|" * len(lengths)]
        for name, g in gen.items():
            cells = [f"{g[n]['bit_errors']:.3g} ({g[n]['seq_accuracy']:.0%})" for n in lengths]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="copy", choices=tuple(TASKS))
    ap.add_argument("--models", default="ntm,lstm", help=f"comma-separated, from {MODELS}")
    ap.add_argument("--preset", default="quick", choices=tuple(PRESETS))
    ap.add_argument("--steps", type=positive_int, default=None,
                    help="override the preset's steps")
    ap.add_argument("--batch-size", type=positive_int, default=None)
    ap.add_argument("--lr", type=positive_float, default=None)
    ap.add_argument("--decay-at", type=non_negative_float, default=None,
                    help="drop the learning rate 10x after this fraction of the steps "
                         "(0: never; default: the preset's)")
    ap.add_argument("--eval-every", type=positive_int, default=None)
    ap.add_argument("--eval-size", type=positive_int, default=None,
                    help="sequences per eval split")
    ap.add_argument("--eval-lengths", default="40,80,120",
                    help="copy: test lengths of the generalisation table ('' for none)")
    ap.add_argument("--threshold", type=non_negative_float, default=0.1,
                    help="bits of error per sequence that count as solved (default 0.1)")
    ap.add_argument("--remat", action="store_true",
                    help="recompute memory steps in the backward pass (less memory)")
    ap.add_argument("--out", default="results", help="root of the run directories")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--resume", default=None, metavar="RUN_DIR",
                    help="continue an interrupted run in RUN_DIR (its arguments win)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in names if m not in MODELS]
    if unknown or not names:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    args.model_names = list(dict.fromkeys(names))
    try:
        args.lengths = comma_list(positive_int)(args.eval_lengths)
    except argparse.ArgumentTypeError as exc:
        ap.error(f"--eval-lengths must be comma-separated positive integers: {exc}")
    if args.decay_at is not None and not 0 <= args.decay_at <= 1:
        ap.error(f"--decay-at must be in [0, 1], got {args.decay_at}")
    return args


def read_run(run_root: Path) -> dict:
    """The ``run.json`` of a run to ``--resume``, checked (one-line errors)."""
    return cli_read_run(run_root, script="memory_tasks.py",
                        layout="<out>/memory/<task>/<timestamp>")


def resolve_preset(args: argparse.Namespace) -> Preset:
    """The preset with the command-line overrides (a given flag always wins)."""
    def pick(value, default):
        return default if value is None else value

    base = PRESETS[args.preset]
    steps = pick(args.steps, base.steps)
    return dataclasses.replace(
        base, steps=steps, batch_size=pick(args.batch_size, base.batch_size),
        lr=pick(args.lr, base.lr), eval_every=min(pick(args.eval_every, base.eval_every), steps),
        eval_size=pick(args.eval_size, base.eval_size),
        decay_at=base.decay_at if args.decay_at is None else (args.decay_at or None))


def main(argv=None) -> dict:
    args = parse_args(argv)
    resuming = bool(args.resume)
    if resuming:
        run_root = Path(args.resume)
        args = parse_args(read_run(run_root)["argv"])  # the interrupted run's own arguments
    else:
        check_output_dir("--out", args.out)

    preset = resolve_preset(args)
    task_name = TASKS[args.task]
    task = get_task(task_name, eval_size=preset.eval_size)
    models = {name: build_model(name, task, remat=args.remat) for name in args.model_names}
    if resuming:
        check_resumable(run_root, models, preset)
    else:  # written once the input is known to be good
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_root = Path(args.out) / "memory" / args.task / stamp
        run_root.mkdir(parents=True, exist_ok=False)
        argv_used = list(sys.argv[1:] if argv is None else argv)
        (run_root / "run.json").write_text(json.dumps({"argv": argv_used}, indent=2))
    print(f"{task!r}\nrun directory: {run_root}\n", flush=True)

    results: dict[str, Any] = {
        "task": task.name, "metric": task.metric_name, "baseline": task.baseline,
        "preset": args.preset, "steps": preset.steps, "batch_size": preset.batch_size,
        "optimizer": preset.optimizer, "lr": preset.lr, "decay_at": preset.decay_at,
        "threshold": args.threshold, "seed": args.seed, "models": {}}
    histories = {}
    t0 = time.time()
    for name, model in models.items():
        r, histories[name], params = run_model(name, model, task, preset, args,
                                               run_root / name, resume=resuming)
        if args.task == "copy" and args.lengths:
            r["generalisation"] = generalisation(model, params, task_name, args.lengths, preset)
        if name in ("ntm", "dnc"):
            maps = ({f"heatmap_{n}.png": (get_task(task_name, eval_len=n, eval_size=1),
                                          f", length {n}") for n in [20] + args.lengths}
                    if args.task == "copy" else {"heatmap.png": (task, "")})
            for file, (eval_task, suffix) in maps.items():
                plot_heatmap(model, params, eval_task, run_root / name / file,
                             f"{name.upper()} on {task.name}{suffix}")
        results["models"][name] = r
        t = r["test"]
        print(f"{name}: test {t['bit_errors']:.3g} bit errors / sequence, "
              f"{t['seq_accuracy']:.1%} exact ({r['params']:,} params, {r['wall_s']:.0f} s)",
              flush=True)
    results["total_wall_s"] = time.time() - t0

    (run_root / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(histories, "bit_errors", run_root / "curves.png", baseline=task.baseline,
                split="valid", logy="symlog", xlabel="training sequences",
                x_scale=preset.batch_size, baseline_label="always 0",
                title=f"{task.name}: validation bits of error per sequence")
    print("\n" + write_table(results, run_root / "table.md"))
    print(f"wrote {run_root}/{{table.md,results.json,curves.png}}")
    return results


if __name__ == "__main__":
    run_main(main)
