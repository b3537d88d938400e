r"""Per-step gate values and statistics of LSTMs and GRUs.

The gates decide how the gradient flows: an LSTM's cell-state path multiplies the gradient by the
forget gate, :math:`\partial c_t / \partial c_{t-1} = \mathrm{diag}(f_t)`, and a GRU's direct
path by the update gate, :math:`\partial h_t / \partial h_{t-1} \ni \mathrm{diag}(z_t)`. A gate
near 1 keeps the memory (and the gradient), a gate near 0 forgets it; a saturated gate (near 0 or
1) also has a vanishing derivative :math:`\sigma' = \sigma(1-\sigma)` and learns slowly.

Gates come from the cell's own forward step (the residuals of ``cell.step_with_residuals``), so
the maths is the one :func:`seqjax.rnn` runs: LSTM ``(i, f, g, o)`` with ``g`` a tanh, GRU
``(r, z, n)`` with ``n`` a tanh (``h_t = (1 - z) n + z h_{t-1}``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import GRU, LSTM, Cell, state_dtype
from seqjax.core.recurrent import rnn

Array = jax.Array

__all__ = ["TANH_GATES", "gate_statistics", "gate_trajectory", "model_gate_trajectories"]

#: Gates whose values lie in (-1, 1) (tanh) rather than (0, 1) (sigmoid).
TANH_GATES = ("g", "n")


def _split_gates(cell: Cell, res: Any) -> dict[str, Array]:
    hid = cell.hidden_size
    if isinstance(cell, LSTM):  # PeepholeLSTM included: res[0] holds the activated (i, f, g, o)
        acts = res[0]
        return {n: acts[..., k * hid:(k + 1) * hid] for k, n in enumerate("ifgo")}
    if isinstance(cell, GRU):  # res = (rz, n, ...)
        rz, n = res[0], res[1]
        return {"r": rz[..., :hid], "z": rz[..., hid:], "n": n}
    raise TypeError(f"gate statistics need an LSTM or GRU cell, got {type(cell).__name__}")


def gate_trajectory(cell: Cell, params: dict, xs: Array,
                    initial_carry: Any = None) -> dict[str, Array]:
    """Activated gates of every step.

    Args:
      cell: an ``LSTM``, ``PeepholeLSTM`` or ``GRU``.
      params: its params.
      xs: inputs ``[B, T, D]`` (full length).
      initial_carry: the carry before step 0 (zeros by default).

    Returns:
      ``{gate: [B, T, H]}``: LSTM ``i, f, g, o``; GRU ``r, z, n``.
    """
    if not isinstance(cell, (LSTM, GRU)):
        raise TypeError(f"gate statistics need an LSTM or GRU cell, got {type(cell).__name__}")
    if getattr(xs, "ndim", None) != 3 or xs.shape[-1] != cell.input_size:
        raise ValueError(f"xs.shape={getattr(xs, 'shape', None)} must be [B, T, "
                         f"{cell.input_size}]")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise TypeError(f"xs.dtype={xs.dtype} must be floating")
    cell.check_params(params)
    acc = state_dtype(xs.dtype)
    carry0 = cell.initial_carry(xs.shape[0], acc) if initial_carry is None else initial_carry
    return _trajectory(cell, params, xs, jax.tree.map(lambda c: jnp.asarray(c, acc), carry0))


def _trajectory_impl(cell, params, xs, carry0):
    _, _, res = rnn(cell, params, xs, initial_carry=carry0, return_residuals=True)
    return _split_gates(cell, res)  # residuals batch-major: each gate [B, T, H]


_trajectory = jax.jit(_trajectory_impl, static_argnums=(0,))


def model_gate_trajectories(model: Any, params: dict, inputs: Array) -> list[dict[str, Array]]:
    """:func:`gate_trajectory` of every layer of a recurrent ``SequenceModel``.

    Returns one ``{gate: [B, T, H]}`` per layer, each layer fed the previous layer's outputs.
    """
    from seqjax.analysis.flow import model_states
    from seqjax.models import SequenceModel, embed_tokens

    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a seqjax.models.SequenceModel, got {type(model).__name__}")
    if model.arch == "tcn":
        raise TypeError("a TCN has no gates; use an LSTM or GRU SequenceModel")
    _, states = model_states(model, params, inputs)
    if model.embed_size:
        feats = embed_tokens(params["embed"], jnp.asarray(inputs))
    else:
        feats = jnp.asarray(inputs)
    layer_inputs = [feats] + [h.astype(feats.dtype) for h in states["h"][:-1]]
    return [gate_trajectory(c, p, x) for c, p, x in zip(model.cells, params["encoder"],
                                                          layer_inputs)]


def gate_statistics(gates: dict[str, Any], *, low: float = 0.05, high: float = 0.95,
                    mask: Any = None) -> dict[str, dict[str, np.ndarray | float]]:
    """Per-step mean and saturation fractions of each gate, over the batch and the units.

    For a sigmoid gate :math:`v \\in (0, 1)`: ``mean[t]`` is its mean, ``frac_low[t]`` the
    fraction of values ``< low`` (closed: forgets), ``frac_high[t]`` the fraction ``> high``
    (open: keeps), ``saturated[t] = frac_low + frac_high``. A tanh gate (``g``, ``n``) is first
    mapped to :math:`(v + 1)/2`, so the same thresholds apply (``frac_low``: :math:`v <
    2\\,\\mathrm{low} - 1`).

    Args:
      gates: ``{gate: [B, T, H]}`` from :func:`gate_trajectory`.
      low, high: saturation thresholds, ``0 <= low < high <= 1``.
      mask: optional ``[B, T]`` bool, the steps that count (e.g. within each length).

    Returns:
      ``{gate: {"mean", "frac_low", "frac_high", "saturated": [T] numpy, and the same four
      over all steps as floats "mean_all", "frac_low_all", "frac_high_all", "saturated_all"}}``.
    """
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= low < high <= 1, got {low=}, {high=}")
    if not isinstance(gates, dict):
        raise TypeError(f"gates must be a dict gate -> [B, T, H] (gate_trajectory), got "
                        f"{type(gates).__name__}")
    out: dict[str, dict[str, Any]] = {}
    for name, v in gates.items():
        v = np.asarray(v, np.float64)
        if v.ndim != 3:
            raise ValueError(f"gates[{name!r}].shape={v.shape} must be [B, T, H]")
        if name in TANH_GATES:
            v = (v + 1.0) / 2.0
        w = np.ones(v.shape[:2]) if mask is None else np.asarray(mask, np.float64)
        if w.shape != v.shape[:2]:
            raise ValueError(f"mask.shape={w.shape} must be {v.shape[:2]} (B, T)")
        w = np.broadcast_to(w[..., None], v.shape)
        stats = {"mean": v, "frac_low": (v < low).astype(np.float64),
                 "frac_high": (v > high).astype(np.float64)}
        stats["saturated"] = stats["frac_low"] + stats["frac_high"]
        res: dict[str, Any] = {}
        for key, arr in stats.items():
            with np.errstate(invalid="ignore", divide="ignore"):
                res[key] = (arr * w).sum(axis=(0, 2)) / w.sum(axis=(0, 2))
            res[key + "_all"] = float((arr * w).sum() / w.sum())
        if name in TANH_GATES:  # report the mean of the raw tanh value
            res["mean"] = 2.0 * res["mean"] - 1.0
            res["mean_all"] = 2.0 * res["mean_all"] - 1.0
        out[name] = res
    return out
