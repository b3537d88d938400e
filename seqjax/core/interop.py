"""Weight conversion between PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and seqjax params.

PyTorch stores ``weight_ih_l{k}[_reverse] [G, D]``, ``weight_hh_l{k}[_reverse] [G, H]``,
``bias_ih_l{k}[_reverse] [G]`` and ``bias_hh_l{k}[_reverse] [G]`` with the same gate order as
seqjax ((i, f, g, o) and (r, z, n)); seqjax stores the transposes, and for the RNN and LSTM the
sum of the two biases (they only ever appear summed). cuDNN uses the same layout as PyTorch.

``from_torch`` returns what :func:`seqjax.core.layers.stacked` takes: a list with one params dict
per
layer (``{"fw": ..., "bw": ...}`` for bidirectional modules). ``to_torch`` inverts it, putting the
whole RNN/LSTM bias into ``bias_ih`` and zeros into ``bias_hh``.

Both check every array against the shapes that ``kind`` implies (``G = gates * H`` with 1, 4 and
3 gates for ``"rnn"``, ``"lstm"`` and ``"gru"``; ``H`` read from the recurrent weight, layer
``k > 0`` reading ``H`` or ``2H`` inputs) and raise ``ValueError`` naming the key, the expected
and the received shape: GRU weights given as an LSTM's are an error, not a silent conversion.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

__all__ = ["from_torch", "to_torch"]

_KINDS = ("rnn", "lstm", "gru")
_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def _numpy(v: Any, name: str) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; torch itself is not imported here
        v = v.detach().cpu().float().numpy()
    try:
        arr = np.asarray(v)
    except Exception as err:
        raise TypeError(f"{name} must be an array, got {type(v).__name__}") from err
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype.name == "bfloat16"):
        raise TypeError(f"{name}.dtype={arr.dtype} must be floating")
    return arr.astype(np.float32)


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r} must be one of {_KINDS}")


def _check_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], kind: str,
                 why: str) -> None:
    if arr.shape != expected:
        raise ValueError(f"{name}.shape={arr.shape} must be {expected} for kind={kind!r} "
                         f"({why})")


def from_torch(state_dict: Mapping[str, Any], kind: str) -> list[dict]:
    """Convert a PyTorch ``nn.RNN/LSTM/GRU`` ``state_dict()`` to seqjax params.

    Args:
      state_dict: the module's ``state_dict()`` (tensors or arrays).
      kind: ``"rnn"`` (tanh or relu: same weights), ``"lstm"`` or ``"gru"``.

    Returns:
      One entry per layer: a params dict, or ``{"fw": ..., "bw": ...}`` if the module is
      bidirectional. Layer ``k`` is for the cell ``make_cell(kind, D_k, H)``.
    """
    _check_kind(kind)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping (module.state_dict()), got "
                        f"{type(state_dict).__name__}")
    found: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
    for name, value in state_dict.items():
        m = _KEY.match(name) if isinstance(name, str) else None
        if m is None:
            raise ValueError(f"unexpected key {name!r} in a PyTorch {kind} state_dict "
                             "(proj_size is not supported)")
        kind_w, side, layer, rev = m.groups()
        found.setdefault((int(layer), rev is not None), {})[f"{kind_w}_{side}"] = _numpy(value,
                                                                                      name)
    if not found:
        raise ValueError("state_dict holds no RNN weights")
    num_layers = 1 + max(layer for layer, _ in found)
    bidi = any(rev for _, rev in found)
    gates = _GATES[kind]
    hidden = None
    layers = []
    for layer in range(num_layers):
        dirs = {}
        for rev in ((False, True) if bidi else (False,)):
            suffix = f"_l{layer}{'_reverse' if rev else ''}"
            if (layer, rev) not in found:
                raise ValueError(f"state_dict lacks layer {layer}{' reverse' if rev else ''} "
                                 f"(no weight_ih{suffix})")
            w = found[(layer, rev)]
            for needed in ("weight_ih", "weight_hh"):
                if needed not in w:
                    raise ValueError(f"state_dict lacks {needed}{suffix}")
            w_hh = w["weight_hh"]
            if w_hh.ndim != 2:
                raise ValueError(f"weight_hh{suffix}.shape={w_hh.shape} must be "
                                 f"[{gates} * H, H] for kind={kind!r}")
            if hidden is None:
                hidden = w_hh.shape[1]
            g = gates * hidden
            _check_shape(f"weight_hh{suffix}", w_hh, (g, hidden), kind,
                         f"{gates} gate(s) x hidden size {hidden}")
            w_ih = w["weight_ih"]
            if layer == 0:
                if w_ih.ndim != 2:
                    raise ValueError(f"weight_ih{suffix}.shape={w_ih.shape} must be "
                                     f"({g}, D) for kind={kind!r}")
                d_in = w_ih.shape[1]
            else:
                d_in = hidden * (2 if bidi else 1)
            _check_shape(f"weight_ih{suffix}", w_ih, (g, d_in), kind,
                         f"{gates} gate(s) x hidden size {hidden}, {d_in} inputs")
            for b in ("bias_ih", "bias_hh"):
                if b in w:
                    _check_shape(f"{b}{suffix}", w[b], (g,), kind,
                                 f"{gates} gate(s) x hidden size {hidden}")
            dirs["bw" if rev else "fw"] = _convert_in(w, kind)
        layers.append(dirs if bidi else dirs["fw"])
    return layers


def _convert_in(w: dict[str, np.ndarray], kind: str) -> dict[str, np.ndarray]:
    g = w["weight_ih"].shape[0]
    b_ih = w.get("bias_ih", np.zeros(g, np.float32))
    b_hh = w.get("bias_hh", np.zeros(g, np.float32))
    out = {"w_x": w["weight_ih"].T.copy(), "w_h": w["weight_hh"].T.copy()}
    if kind == "gru":
        out.update(b_x=b_ih, b_h=b_hh)
    else:
        out["b"] = b_ih + b_hh
    return out


def to_torch(params: list[dict], kind: str) -> dict[str, np.ndarray]:
    """Inverse of :func:`from_torch`: a dict loadable with
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in ...})``.

    ``params``: one entry per layer (a cell's params, ``{"fw", "bw"}`` if bidirectional), e.g.
    LSTM ``{"w_x": [D, 4H], "w_h": [H, 4H], "b": [4H]}``.

    Raises:
      ValueError / TypeError: ``kind`` unknown, or an entry whose keys or shapes do not fit
        ``kind`` (named by its path, e.g. ``params[1]['bw']['w_h']``).
    """
    _check_kind(kind)
    if isinstance(params, dict) or not isinstance(params, (list, tuple)) or not params:
        raise TypeError(f"params must be a non-empty list with one entry per layer, got "
                        f"{type(params).__name__}")
    gates = _GATES[kind]
    keys = ("w_x", "w_h", "b_x", "b_h") if kind == "gru" else ("w_x", "w_h", "b")
    bidi = isinstance(params[0], dict) and "fw" in params[0]
    hidden = None
    out: dict[str, np.ndarray] = {}
    for layer, p in enumerate(params):
        if not isinstance(p, dict):
            raise TypeError(f"params[{layer}] must be a dict, got {type(p).__name__}")
        if bidi != ("fw" in p):
            raise ValueError(f"params[{layer}] must {'' if bidi else 'not '}be a "
                             f"{{'fw', 'bw'}} dict like params[0]")
        dirs = [("", "fw", p.get("fw")), ("_reverse", "bw", p.get("bw"))] if bidi \
            else [("", None, p)]
        for suffix, side, q in dirs:
            where = f"params[{layer}]" + (f"[{side!r}]" if side else "")
            if not isinstance(q, dict):
                raise TypeError(f"{where} must be a dict, got {type(q).__name__}")
            missing = [k for k in keys if k not in q]
            if missing:
                raise ValueError(f"{where} lacks {missing} for kind={kind!r} (expected keys "
                                 f"{list(keys)})")
            q = {k: _numpy(q[k], f"{where}[{k!r}]") for k in keys}
            if q["w_h"].ndim != 2:
                raise ValueError(f"{where}['w_h'].shape={q['w_h'].shape} must be "
                                 f"[H, {gates} * H] for kind={kind!r}")
            if hidden is None:
                hidden = q["w_h"].shape[0]
            g = gates * hidden
            why = f"{gates} gate(s) x hidden size {hidden}"
            _check_shape(f"{where}['w_h']", q["w_h"], (hidden, g), kind, why)
            d_in = q["w_x"].shape[0] if (layer == 0 and q["w_x"].ndim == 2) else (
                hidden * (2 if bidi else 1))
            _check_shape(f"{where}['w_x']", q["w_x"], (d_in, g), kind, f"{why}, {d_in} inputs")
            for k in keys[2:]:
                _check_shape(f"{where}[{k!r}]", q[k], (g,), kind, why)
            out[f"weight_ih_l{layer}{suffix}"] = q["w_x"].T.copy()
            out[f"weight_hh_l{layer}{suffix}"] = q["w_h"].T.copy()
            if kind == "gru":
                out[f"bias_ih_l{layer}{suffix}"] = q["b_x"]
                out[f"bias_hh_l{layer}{suffix}"] = q["b_h"]
            else:
                out[f"bias_ih_l{layer}{suffix}"] = q["b"]
                out[f"bias_hh_l{layer}{suffix}"] = np.zeros_like(q["b"])
    return out
