"""Weight conversion between PyTorch ``nn.RNN`` / ``nn.LSTM`` / ``nn.GRU`` and seqjax params.

PyTorch stores ``weight_ih_l{k}[_reverse] [G, D]``, ``weight_hh_l{k}[_reverse] [G, H]``,
``bias_ih_l{k}[_reverse] [G]`` and ``bias_hh_l{k}[_reverse] [G]`` with the same gate order as
seqjax ((i, f, g, o) and (r, z, n)); seqjax stores the transposes, and for the RNN and LSTM the
sum of the two biases (they only ever appear summed). cuDNN uses the same layout as PyTorch.

``from_torch`` returns what :func:`seqjax.layers.stacked` takes: a list with one params dict per
layer (``{"fw": ..., "bw": ...}`` for bidirectional modules). ``to_torch`` inverts it, putting the
whole RNN/LSTM bias into ``bias_ih`` and zeros into ``bias_hh``.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import numpy as np

__all__ = ["from_torch", "to_torch"]

_KINDS = ("rnn", "lstm", "gru")
_KEY = re.compile(r"^(weight|bias)_(ih|hh)_l(\d+)(_reverse)?$")


def _numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # a torch tensor; torch itself is not imported here
        v = v.detach().cpu().numpy()
    return np.asarray(v, np.float32)


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind={kind!r} must be one of {_KINDS}")


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
    found: dict[tuple[int, bool], dict[str, np.ndarray]] = {}
    for name, value in state_dict.items():
        m = _KEY.match(name)
        if m is None:
            raise ValueError(f"unexpected key {name!r} in a PyTorch {kind} state_dict "
                             "(proj_size is not supported)")
        kind_w, side, layer, rev = m.groups()
        found.setdefault((int(layer), rev is not None), {})[f"{kind_w}_{side}"] = _numpy(value)
    if not found:
        raise ValueError("state_dict holds no RNN weights")
    num_layers = 1 + max(layer for layer, _ in found)
    bidi = any(rev for _, rev in found)
    layers = []
    for layer in range(num_layers):
        dirs = {}
        for rev in ((False, True) if bidi else (False,)):
            if (layer, rev) not in found:
                raise ValueError(f"state_dict lacks layer {layer} {'reverse' if rev else ''}")
            dirs["bw" if rev else "fw"] = _convert_in(found[(layer, rev)], kind)
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
    ``module.load_state_dict({k: torch.from_numpy(v) for k, v in ...})``."""
    _check_kind(kind)
    out: dict[str, np.ndarray] = {}
    for layer, p in enumerate(params):
        dirs = [("", p["fw"]), ("_reverse", p["bw"])] if "fw" in p else [("", p)]
        for suffix, q in dirs:
            q = {k: np.asarray(v, np.float32) for k, v in q.items()}
            out[f"weight_ih_l{layer}{suffix}"] = q["w_x"].T.copy()
            out[f"weight_hh_l{layer}{suffix}"] = q["w_h"].T.copy()
            if kind == "gru":
                out[f"bias_ih_l{layer}{suffix}"] = q["b_x"]
                out[f"bias_hh_l{layer}{suffix}"] = q["b_h"]
            else:
                out[f"bias_ih_l{layer}{suffix}"] = q["b"]
                out[f"bias_hh_l{layer}{suffix}"] = np.zeros_like(q["b"])
    return out
