"""Vanishing and exploding gradients, seen: gradient norm against distance in time.

    python experiments/gradient_flow.py                                  # adding, T=100
    python experiments/gradient_flow.py --task copy --models rnn,lstm,gru,tcn --out results/gf
    python experiments/gradient_flow.py --radii 0.5,0.9,1.0,1.1,1.5 --only radius

Three parts, each a PNG in ``--out`` (default ``results/gradient_flow/<task>``), and one
``summary.json`` with the numbers behind them:

1. ``flow.png`` (``--only flow``): for every model, the norm of the gradient of the last step's
   loss :math:`L_T` with respect to the input :math:`x_{T-d}` (top row) and to the hidden state
   :math:`h_{T-d}` (bottom row: first recurrent layer; LSTM cell state dashed; TCN: output of
   the first residual block), against the distance :math:`d`, on a log scale; at
   initialisation (left) and after a short training (right). One backward pass per curve
   (:func:`seqjax.analysis.model_gradient_flow`). The TCN's receptive field is marked: beyond it
   its gradient is exactly zero (and so missing on the log scale).
2. ``radius.png`` (``--only radius``): a linear RNN :math:`h_t = W h_{t-1} + x_t` and a tanh RNN
   with :math:`W_h = \\rho Q` (:math:`Q` orthogonal, so every singular value and the spectral
   radius are :math:`\\rho`) for :math:`\\rho` = 0.5, 1.0, 1.5: the gradient vanishes, holds or
   explodes as :math:`\\rho^d` in the linear RNN; in the tanh RNN saturation caps the growth.
3. ``clipping.png`` (``--only clipping``): a tanh RNN trained with plain SGD with and without
   gradient clipping by global norm: the gradient norm before and after clipping, and the loss.

The defaults run in a couple of minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from seqjax.analysis import (
    LinearRNN,
    by_distance,
    cell_gradient_flow,
    gate_statistics,
    geometric_rate,
    grad_norm_history,
    jacobian_spectrum,
    model_gate_trajectories,
    model_gradient_flow,
    track_grad_norms,
    weight_spectrum,
)
from seqjax.cli import (
    check_devices,
    check_output_dir,
    comma_list,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.core.cells import SimpleRNN
from seqjax.data import get_task
from seqjax.data.base import softmax_cross_entropy
from seqjax.models import ARCHS, SequenceModel, param_count
from seqjax.train import fit, make_optimizer, mesh_for, task_loss_fn

COLOURS = {"rnn": "tab:red", "lstm": "tab:blue", "gru": "tab:green", "tcn": "tab:purple",
           "rnn_relu": "tab:orange", "peephole_lstm": "tab:cyan", "gru_before": "tab:olive"}
DEFAULT_SEQ_LEN = {"adding": 100, "copy": 50}


# ---------------------------------------------------------------------------------------------
# Models and the loss L_T


def build_model(arch: str, task: Any, args: argparse.Namespace) -> SequenceModel:
    embed = args.embed if task.token_inputs else 0
    if arch == "tcn":
        return SequenceModel("tcn", task.input_size, task.output_size, args.tcn_hidden,
                             num_layers=args.tcn_levels, kernel_size=args.tcn_kernel,
                             embed_size=embed, backend="scan")
    return SequenceModel(arch, task.input_size, task.output_size, args.hidden,
                         embed_size=embed, backend="scan")


class LastStepLoss:
    """:math:`L_T`: the task's loss at the last step only, summed over the batch (so that the
    per-example gradients are exact). Adding: squared error of the prediction at ``T``; copy:
    cross-entropy of the last recalled symbol."""

    def __init__(self, task: Any, batch: Any):
        self.task, self.batch = task, batch

    def __call__(self, outputs: jax.Array) -> jax.Array:
        if self.task.name == "adding":
            return self.task.loss_terms(outputs, self.batch)["loss"]
        return jnp.sum(softmax_cross_entropy(outputs[:, -1], self.batch.targets[:, -1]))


def _curve(norms: Any) -> list[float]:
    return [float(v) for v in by_distance(norms)]


def _rate(curve: Any, upto: int | None = None) -> float:
    return geometric_rate(curve, start=1, stop=upto)


# ---------------------------------------------------------------------------------------------
# Part 1: every model at init and after training


def flow_part(task: Any, args: argparse.Namespace, out: Path) -> dict:
    batch = task.train_batch(10_000_000, args.batch, seed=args.seed + 1)  # held-out stream
    loss_last = LastStepLoss(task, batch)
    results: dict[str, Any] = {}
    for arch in args.models:
        model = build_model(arch, task, args)
        params = model.init(jax.random.PRNGKey(args.seed))
        entry: dict[str, Any] = {"params": param_count(params),
                                 "receptive_field": model.receptive_field}
        t0 = time.perf_counter()
        flows = {"init": model_gradient_flow(model, params, batch.inputs, loss_last)}
        summaries = {"init": _model_summary(model, params, batch)}
        opt = make_optimizer("adam", args.lr, clip_norm=args.clip)
        res = fit(params=params, loss_fn=task_loss_fn(model, task), optimizer=opt,
                  train_batches=lambda i: task.train_batch(i, args.batch, seed=args.seed),
                  num_steps=args.steps, run_dir=None, log_every=max(1, args.steps // 50),
                  progress=False, seed=args.seed, mesh=mesh_for(args.devices))
        trained = res.state.params
        flows["trained"] = model_gradient_flow(model, trained, batch.inputs, loss_last)
        summaries["trained"] = _model_summary(model, trained, batch)
        hist = grad_norm_history(res.history, args.clip)
        for when, flow in flows.items():
            dx, dh = by_distance(flow.dx), by_distance(flow.dh[0])
            entry[when] = {
                "loss_T": float(flow.loss) / args.batch,
                "dx_by_distance": [float(v) for v in dx],
                "dh_by_distance": [float(v) for v in dh],
                "dx_rate": _rate(dx, model.receptive_field),
                "dh_rate": None if arch == "tcn" else _rate(dh),
                "dx_far_over_near": float(dx[-1] / dx[0]) if dx[0] > 0 else None,
                **summaries[when],
            }
            if flow.dc is not None:
                entry[when]["dc_by_distance"] = _curve(flow.dc[0])
        entry["train"] = {"final_loss": float(hist["loss"][-1]),
                          "grad_norm_before_clip": [float(v) for v in hist["before"]],
                          "grad_norm_after_clip": [float(v) for v in hist["after"]],
                          "steps": [int(s) for s in hist["step"]],
                          "wall_s": round(time.perf_counter() - t0, 2)}
        results[arch] = entry
        print(f"  {arch:5s} loss {entry['train']['final_loss']:.4f}  dx rate init "
              f"{entry['init']['dx_rate']:.3f} trained {entry['trained']['dx_rate']:.3f}  "
              f"({entry['train']['wall_s']:.1f}s)", flush=True)
    _plot_flow(results, task, args, out / "flow.png")
    return results


def _model_summary(model: SequenceModel, params: dict, batch: Any) -> dict:
    """Recurrent models: spectrum of the first layer's W_h blocks and gate statistics."""
    if model.arch == "tcn":
        return {}
    cell, p = model.cells[0], params["encoder"][0]
    spec = weight_spectrum(cell, p, k=3)
    out: dict[str, Any] = {"w_h_spectrum": {
        k: {"top_singular_values": [float(s) for s in v["singular_values"]],
            "spectral_radius": float(v["spectral_radius"])} for k, v in spec.items()}}
    if model.arch in ("lstm", "gru", "peephole_lstm", "gru_before"):
        gates = model_gate_trajectories(model, params, batch.inputs)[0]
        stats = gate_statistics(gates)
        out["gates"] = {g: {k: round(v, 4) for k, v in s.items() if k.endswith("_all")}
                        for g, s in stats.items()}
    return out


def _log_safe(values: Any) -> np.ndarray:
    """Exact zeros (beyond a TCN's reach) and non-finite values left out of a log plot."""
    v = np.asarray(values, np.float64)
    return np.where(np.isfinite(v) & (v > 0), v, np.nan)


def _plot_flow(results: dict, task: Any, args: argparse.Namespace, path: Path) -> None:
    fig = Figure(figsize=(12, 8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2, sharex=True)
    for col, when in enumerate(("init", "trained")):
        for arch, entry in results.items():
            colour = COLOURS.get(arch, None)
            data = entry[when]
            d = np.arange(len(data["dx_by_distance"]))
            axes[0, col].plot(d, _log_safe(data["dx_by_distance"]), color=colour, label=arch)
            if arch == "tcn":  # block outputs reach L_T on the dilated grid only: points
                axes[1, col].plot(d, _log_safe(data["dh_by_distance"]), color=colour, ls="none",
                                  marker=".", ms=3, label=f"{arch} (block 1 output)")
            else:
                axes[1, col].plot(d, _log_safe(data["dh_by_distance"]), color=colour,
                                  label=f"{arch} h")
            if "dc_by_distance" in data:
                axes[1, col].plot(d, _log_safe(data["dc_by_distance"]), color=colour, ls="--",
                                  label=f"{arch} c")
            rf = entry["receptive_field"]
            if rf is not None and rf <= len(d):
                for row in (0, 1):
                    axes[row, col].axvline(rf - 0.5, color=colour, ls=":", lw=1)
        what = "initialisation" if when == "init" else f"after {args.steps} training steps"
        axes[0, col].set_title(f"{task.name}: {what}")
        axes[0, col].set_ylabel(r"$\|\partial L_T / \partial x_{T-d}\|$")
        axes[1, col].set_ylabel(r"$\|\partial L_T / \partial h_{T-d}\|$")
        axes[1, col].set_xlabel("distance d = T - t (steps)")
        for row in (0, 1):
            axes[row, col].set_yscale("log")
            axes[row, col].grid(True, which="major", alpha=0.3)
            axes[row, col].legend(fontsize=8)
    fig.suptitle("Gradient of the last step's loss against distance in time (batch mean; "
                 "dotted: TCN receptive field, beyond it the gradient is exactly 0)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# Part 2: recurrent weight scale


def _float_inputs(task: Any, batch: Any) -> jax.Array:
    if task.token_inputs:  # one-hot tokens
        return jax.nn.one_hot(batch.inputs, task.input_size)
    return jnp.asarray(batch.inputs)


def radius_part(task: Any, args: argparse.Namespace, out: Path) -> dict:
    batch = task.train_batch(0, args.batch, seed=args.seed)
    xs = _float_inputs(task, batch)
    d_in, hid = xs.shape[-1], args.hidden
    key_x, key_q, key_g = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    w_x = jax.nn.initializers.glorot_uniform()(key_x, (d_in, hid))
    q = jax.nn.initializers.orthogonal()(key_q, (hid, hid))
    g = jax.random.normal(key_g, (hid,))
    g = g / jnp.linalg.norm(g)
    results: dict[str, Any] = {"hidden": hid, "T": int(xs.shape[1]), "cells": {}}
    for name, cell in (("linear", LinearRNN(d_in, hid)), ("tanh", SimpleRNN(d_in, hid))):
        rows = {}
        for rho in args.radii:
            params = {"w_x": w_x, "w_h": rho * q, "b": jnp.zeros(hid)}
            flow = cell_gradient_flow(cell, params, xs, cotangent=g)
            curve = by_distance(flow.dh)
            row = {"dh_by_distance": [float(v) for v in curve], "rate": _rate(curve),
                   "far_over_near": float(curve[-1] / curve[0]),
                   "w_h": {k: {"top_singular_value": float(v["singular_values"][0]),
                               "spectral_radius": float(v["spectral_radius"])}
                           for k, v in weight_spectrum(cell, params, k=1).items()}["h"]}
            if name == "tanh":
                js = jacobian_spectrum(cell, params, xs[: min(4, xs.shape[0])], k=1)
                row["step_jacobian"] = {
                    "mean_top_singular_value": float(np.mean(js["singular_values"][..., 0])),
                    "mean_spectral_radius": float(np.mean(js["spectral_radius"]))}
            rows[f"{rho:g}"] = row
            print(f"  {name:6s} rho={rho:<4g} fitted rate {row['rate']:.4f}  "
                  f"||dL/dh_0||/||dL/dh_T|| = {row['far_over_near']:.3g}", flush=True)
        results["cells"][name] = rows
    _plot_radius(results, task, out / "radius.png")
    return results


def _plot_radius(results: dict, task: Any, path: Path) -> None:
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    cmap = {0: "tab:blue", 1: "tab:gray", 2: "tab:red"}
    for ax, (name, rows) in zip(axes, results["cells"].items()):
        for i, (rho, row) in enumerate(rows.items()):
            colour = cmap.get(i, None) if len(rows) == 3 else None
            d = np.arange(len(row["dh_by_distance"]))
            label = rf"$\rho$={rho} (fit {row['rate']:.3f}/step)"
            ax.plot(d, row["dh_by_distance"], color=colour, label=label)
            if name == "linear":
                ax.plot(d, float(rho) ** d, color=colour, ls=":", lw=1)
        title = (r"linear RNN $h_t = W h_{t-1} + W_x x_t$ (dotted: $\rho^d$)" if name == "linear"
                 else r"tanh RNN $h_t = \tanh(W h_{t-1} + W_x x_t)$")
        ax.set_title(title, fontsize=10)
        ax.set_yscale("log")
        ax.set_xlabel("distance d = T - t (steps)")
        ax.set_ylabel(r"$\|\partial L_T / \partial h_{T-d}\|$, $L_T = \langle g, h_T\rangle$")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(rf"Recurrent weight $W = \rho Q$ ($Q$ orthogonal), H={results['hidden']}, "
                 f"{task.name} inputs, T={results['T']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------
# Part 3: clipping


def clipping_part(task: Any, args: argparse.Namespace, out: Path) -> dict:
    model = SequenceModel("rnn", task.input_size, task.output_size, args.hidden,
                          embed_size=args.embed if task.token_inputs else 0, backend="scan")
    params = model.init(jax.random.PRNGKey(args.seed))
    enc = params["encoder"][0]
    params["encoder"][0] = dict(enc, w_h=args.clip_radius * enc["w_h"])  # orthogonal * rho
    loss_fn = task_loss_fn(model, task)

    def batches(i):
        return task.train_batch(i, args.batch, seed=args.seed)

    runs = {}
    for label, clip in (("no clipping", None), (f"clip {args.clip:g}", args.clip)):
        t0 = time.perf_counter()
        res = track_grad_norms(loss_fn, params, make_optimizer("sgd", args.clip_lr), batches,
                               args.clip_steps, clip_norm=clip, seed=args.seed,
                               stop_on_nonfinite=True)
        finite = np.isfinite(res["loss"])
        tail = res["loss"][finite][-20:]
        runs[label] = {
            "clip_norm": clip,
            "loss": [float(v) for v in res["loss"]],
            "grad_norm_before_clip": [float(v) for v in res["before"]],
            "grad_norm_after_clip": [float(v) for v in res["after"]],
            "max_grad_norm": float(np.nanmax(res["before"])) if finite.any() else None,
            "median_grad_norm": float(np.nanmedian(res["before"])) if finite.any() else None,
            "fraction_clipped": float(np.mean(res["clipped"])),
            "final_loss": float(np.mean(tail)) if tail.size else None,
            "diverged_at": res["diverged_at"],
            "wall_s": round(time.perf_counter() - t0, 2),
        }
        r = runs[label]
        print(f"  {label:12s} final loss {r['final_loss']}  max |g| {r['max_grad_norm']}  "
              f"clipped {100 * r['fraction_clipped']:.0f}% of steps  diverged at "
              f"{r['diverged_at']}", flush=True)
    _plot_clipping(runs, task, args, out / "clipping.png")
    return {"optimizer": f"sgd lr={args.clip_lr:g}", "w_h_radius": args.clip_radius,
            "steps": args.clip_steps, "runs": runs}


def _plot_clipping(runs: dict, task: Any, args: argparse.Namespace, path: Path) -> None:
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    ax_g, ax_l = fig.subplots(1, 2)
    colours = ("tab:red", "tab:blue")
    for colour, (label, run) in zip(colours, runs.items()):
        steps = np.arange(1, len(run["loss"]) + 1)
        ax_g.plot(steps, run["grad_norm_before_clip"], color=colour, lw=1,
                  label=f"{label}: before clipping")
        if run["clip_norm"] is not None:
            ax_g.plot(steps, run["grad_norm_after_clip"], color=colour, lw=1.5, ls="--",
                      label=f"{label}: after clipping")
        ax_l.plot(steps, run["loss"], color=colour, lw=1, label=label)
        if run["diverged_at"] is not None:
            for ax in (ax_g, ax_l):
                ax.axvline(run["diverged_at"], color=colour, ls=":", lw=1)
            ax_l.annotate(f"non-finite at step {run['diverged_at']}",
                          (run["diverged_at"], 0.5), xycoords=("data", "axes fraction"),
                          xytext=(5, 0), textcoords="offset points", color=colour, fontsize=8)
    clip = next((r["clip_norm"] for r in runs.values() if r["clip_norm"] is not None), None)
    if clip is not None:
        ax_g.axhline(clip, color="k", ls=":", lw=1)
    ax_g.set_yscale("log")
    ax_g.set_title("global gradient norm")
    ax_l.set_title(f"training loss ({task.name})")
    ax_l.set_yscale("log")
    for ax in (ax_g, ax_l):
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(rf"tanh RNN, $W_h$ = {args.clip_radius:g} $\times$ orthogonal, "
                 f"SGD lr={args.clip_lr:g}: with and without gradient clipping")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("adding", "copy"), default="adding")
    p.add_argument("--models", default="rnn,lstm,gru,tcn",
                   help="comma-separated: tcn, rnn, lstm, gru, rnn_relu, peephole_lstm, ...")
    p.add_argument("--out", type=Path, default=None,
                   help="output directory (default results/gradient_flow/<task>)")
    p.add_argument("--only", choices=("flow", "radius", "clipping"), action="append",
                   help="run only these parts (repeatable); default all three")
    p.add_argument("--seq-len", type=positive_int, default=None,
                   help="adding: T (default 100); copy: blank length (default 50, T = len + 20)")
    p.add_argument("--batch", type=positive_int, default=32)
    p.add_argument("--hidden", type=positive_int, default=32, help="recurrent hidden size")
    p.add_argument("--embed", type=positive_int, default=10,
                   help="embedding size for token tasks")
    p.add_argument("--tcn-hidden", type=positive_int, default=16)
    p.add_argument("--tcn-levels", type=positive_int, default=4)
    p.add_argument("--tcn-kernel", type=positive_int, default=4)
    p.add_argument("--steps", type=positive_int, default=1500, help="training steps of part 1")
    p.add_argument("--lr", type=positive_float, default=5e-3,
                   help="adam learning rate of part 1")
    p.add_argument("--clip", type=positive_float, default=1.0,
                   help="global-norm clipping threshold")
    p.add_argument("--radii", type=comma_list(positive_float), default="0.5,1.0,1.5",
                   help="spectral radii of part 2")
    p.add_argument("--clip-steps", type=positive_int, default=300, help="SGD steps of part 3")
    p.add_argument("--clip-lr", type=positive_float, default=0.1,
                   help="SGD learning rate of part 3")
    p.add_argument("--clip-radius", type=positive_float, default=1.0,
                   help="scale of the orthogonal recurrent weight in part 3")
    p.add_argument("--devices", type=non_negative_int, default=1,
                    help="data-parallel over this many devices (0: all); the batch must divide")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)
    args.models = list(dict.fromkeys(m.strip() for m in args.models.split(",") if m.strip()))
    unknown = [m for m in args.models if m not in ARCHS]
    if unknown or not args.models:
        p.error(f"--models: unknown model(s) {unknown}; choose from {', '.join(ARCHS)}")
    if not args.radii:
        p.error("--radii: give at least one spectral radius")
    if args.seq_len is None:
        args.seq_len = DEFAULT_SEQ_LEN[args.task]
    if args.out is None:
        args.out = Path("results") / "gradient_flow" / args.task
    args.only = args.only or ["flow", "radius", "clipping"]
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    check_output_dir("--out", args.out)
    if "flow" in args.only:
        check_devices(args.devices, args.batch, batch_flag="--batch")
    task = get_task(args.task, seq_len=args.seq_len, eval_size=args.batch)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "task": args.task, "seq_len": args.seq_len,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "measured": ("flow: ||dL_T/dx_{T-d}|| (encoder input: features or embeddings) and "
                     "||dL_T/dh_{T-d}|| (first recurrent layer's hidden state, LSTM also c; TCN: "
                     "first block's output), batch means; L_T = the task loss at the last step "
                     "(adding: squared error; copy: cross-entropy of the last symbol); rate = "
                     "per-step factor of a log-linear fit over d >= 1 (inside the receptive "
                     "field for the TCN)"),
    }
    if "flow" in args.only:
        print(f"[1/3] gradient flow of {', '.join(args.models)} on {args.task}", flush=True)
        summary["flow"] = flow_part(task, args, args.out)
    if "radius" in args.only:
        print(f"[2/3] recurrent weight scale {args.radii}", flush=True)
        summary["radius"] = radius_part(task, args, args.out)
    if "clipping" in args.only:
        print("[3/3] gradient clipping", flush=True)
        summary["clipping"] = clipping_part(task, args, args.out)
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(_finite(summary), indent=1, default=_json)
    (args.out / "summary.json").write_text(text + "\n")
    pngs = sorted(p.name for p in args.out.glob("*.png"))
    print(f"wrote {args.out}/summary.json and {', '.join(pngs)} in {summary['wall_s']}s")
    return summary


def _json(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    if dataclasses.is_dataclass(v):
        return dataclasses.asdict(v)
    return str(v)


def _finite(v: Any) -> Any:
    """NaN and infinities as None (strict JSON)."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


if __name__ == "__main__":
    run_main(main)
    sys.exit(0)
