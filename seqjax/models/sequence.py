"""Sequence models for the experiments: ``[embedding] -> encoder -> per-step linear readout``.

The encoder is a TCN (:mod:`seqjax.core.tcn`) or a recurrent stack (:func:`seqjax.stacked`); the
model emits one output per input step, and the task (:mod:`seqjax.data`) picks the steps its
loss uses. Like the cells, a model is a frozen dataclass of static configuration with
``init(key) -> params`` and a pure ``apply``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.cells import cell_kinds, glorot_uniform
from seqjax.core.layers import dropout
from seqjax.core.tcn import TCN
from seqjax.models.encoder import (
    Encoder,
    check_arch,
    check_backend,
    check_cell_options,
    model_archs,
)

Array = jax.Array

__all__ = ["SequenceModel", "param_count", "hidden_for_params", "ARCHS", "check_params",
           "check_tokens", "check_token_ids", "check_lengths", "embed_tokens"]

#: The recurrent architectures: the cell kinds registered when :mod:`seqjax` was imported
#: (models validate against :func:`seqjax.models.model_archs`, read at call time).
RECURRENT_ARCHS = cell_kinds()
#: ``"tcn"`` and :data:`RECURRENT_ARCHS`: the scripts' ``--models`` choices.
ARCHS = model_archs()


def param_count(params: Any) -> int:
    """Number of scalars in a params pytree."""
    return int(sum(math.prod(jnp.shape(p)) for p in jax.tree.leaves(params)))


# ---------------------------------------------------------------------------------------------
# Validation shared by the models (SequenceModel, LanguageModel, Classifier)
# ---------------------------------------------------------------------------------------------


def _is_concrete(x: Any) -> bool:
    """Whether ``x``'s values are known now (not a tracer under ``jit``/``grad``/``vmap``)."""
    return not isinstance(x, jax.core.Tracer)


@functools.lru_cache(maxsize=256)
def _expected_params(model: Any) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(path, shape)`` of every leaf of ``model.init(key)``, from ``jax.eval_shape``; cached
    per model (models are frozen dataclasses, hashable)."""
    shapes = jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32))
    leaves = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return tuple((jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves)


def check_params(model: Any, params: Any, name: str = "params") -> None:
    """Raises unless ``params`` has the tree structure and leaf shapes of ``model.init(key)``.

    Static (Python-level, shapes only): it works under ``jit`` and costs one tree flatten after
    the first call per model. It catches params of another model: another vocabulary size,
    hidden size, number of layers or kind of cell (where the shapes differ; ``"rnn"`` and
    ``"rnn_relu"`` params, for instance, have the same shapes).

    Raises:
      TypeError: ``params`` is not a pytree of arrays.
      ValueError: naming the first path that is missing, unexpected or of another shape, with
        the expected and the received shapes.
    """
    if not hasattr(params, "keys"):
        raise TypeError(f"{name} must be the params pytree of {type(model).__name__}.init(key) "
                        f"(a dict), got {type(params).__name__}")
    expected = _expected_params(model)
    try:
        leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    except Exception as exc:  # pragma: no cover - exotic containers
        raise TypeError(f"{name} is not a pytree: {exc}") from exc
    got: dict[str, tuple[int, ...]] = {}
    for path, leaf in leaves:
        shape = getattr(leaf, "shape", None)
        if shape is None:
            raise TypeError(f"{name}{jax.tree_util.keystr(path)} is a "
                            f"{type(leaf).__name__}, not an array")
        got[jax.tree_util.keystr(path)] = tuple(shape)
    what = f"{model!r}: are they the params of another model?"
    for path, shape in expected:
        if path not in got:
            raise ValueError(f"{name}{path} is missing (expected shape {shape}) for {what}")
        if got[path] != shape:
            raise ValueError(f"{name}{path}.shape={got[path]} must be {shape} for {what}")
    extra = sorted(set(got) - {path for path, _ in expected})
    if extra:
        raise ValueError(f"{name}{extra[0]} (shape {got[extra[0]]}) is not a parameter of "
                         f"{what}")


def check_tokens(tokens: Any, vocab_size: int, lengths: Any = None, *, name: str = "tokens",
                 lengths_name: str = "lengths", hint: str = "") -> tuple[Array, Array | None]:
    """Validates ``[B, T]`` integer token ids and optional ``[B]`` lengths; returns both as
    arrays (``lengths`` stays ``None`` if not given).

    The dtypes and shapes are checked always (static); the ranges (ids in ``[0, vocab_size)``,
    lengths in ``[0, T]``) only where the values are concrete (not under ``jit``), the ids only
    at the valid positions ``t < lengths[b]`` (padding may hold any id).

    Raises:
      TypeError: non-integer ids or lengths (floats, bools), naming the argument and the dtype.
      ValueError: ids not ``[B, T]``, lengths not ``(B,)``, or values out of range (naming the
        offending min and max and the bound).
    """
    if not hasattr(tokens, "dtype"):
        tokens = np.asarray(tokens)
    dtype = tokens.dtype
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name}.dtype={dtype} must be integer token ids in "
                        f"[0, {vocab_size}){hint}")
    if jnp.ndim(tokens) != 2:
        raise ValueError(f"{name}.shape={tuple(jnp.shape(tokens))} must be [B, T] = (batch, "
                         f"steps) token ids{hint}")
    if lengths is not None:
        lengths = check_lengths(lengths, *jnp.shape(tokens), name=lengths_name)
    if _is_concrete(tokens) and (lengths is None or _is_concrete(lengths)):
        ids = np.asarray(tokens)
        if lengths is not None:
            ids = ids[np.arange(ids.shape[1])[None, :] < np.asarray(lengths)[:, None]]
        if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
            raise ValueError(f"{name} must lie in [0, vocab_size={vocab_size}), got min "
                             f"{ids.min()} max {ids.max()}")
    return jnp.asarray(tokens), lengths


def check_token_ids(tokens: Any, vocab_size: int, *, name: str = "tokens",
                    lengths: Any = None) -> Array:
    """:func:`check_tokens` returning only the ids (``lengths``, if given, already checked)."""
    return check_tokens(tokens, vocab_size, lengths, name=name)[0]


def check_lengths(lengths: Any, batch: int, steps: int, *, name: str = "lengths") -> Array:
    """Validates ``[B]`` integer lengths in ``[0, T]`` (the range only where concrete)."""
    if not hasattr(lengths, "dtype"):
        lengths = np.asarray(lengths)
    shape = tuple(jnp.shape(lengths))
    if shape != (batch,):
        raise ValueError(f"{name}.shape={shape} must be ({batch},): one length per sequence")
    dtype = lengths.dtype
    if dtype == jnp.bool_ or not jnp.issubdtype(dtype, jnp.integer):
        raise TypeError(f"{name}.dtype={dtype} must be an integer dtype")
    if _is_concrete(lengths):
        v = np.asarray(lengths)
        if v.size and (v.min() < 0 or v.max() > steps):
            raise ValueError(f"{name} must lie in [0, T={steps}], got min {v.min()} max "
                             f"{v.max()}")
    return jnp.asarray(lengths)


def embed_tokens(table: Array, tokens: Array) -> Array:
    """``table[tokens]``, ``[..., E]``; an out-of-range id (negative included) reads a row of NaN.

    Under ``jit`` the ids cannot be range-checked, and a plain gather would clamp them (or wrap
    negative ones) and silently read another row: this lookup makes the mistake visible as NaN
    instead (its gradient to the table is dropped).
    """
    return table.at[tokens].get(mode="fill", fill_value=jnp.nan, wrap_negative_indices=False)


@dataclasses.dataclass(frozen=True)
class SequenceModel:
    """A per-step sequence model.

    Args:
      arch: ``"tcn"`` or a recurrent cell kind (``"lstm"``, ``"gru"``, ``"rnn"``, ...).
      input_size: feature size ``D`` of float inputs, or the vocabulary size when
        ``embed_size > 0`` (inputs are then ``[B, T]`` int token ids).
      output_size: outputs per step ``O`` (logits or regression values).
      hidden_size: recurrent hidden size, or TCN channels per level.
      num_layers: recurrent layers, or TCN levels (residual blocks).
      kernel_size: TCN kernel size (ignored by recurrent archs).
      dropout: TCN: inside every block; recurrent: between layers and before the readout.
      embed_size: size of a learned input embedding (0: float inputs, no embedding).
      backend: recurrent backend (see :func:`seqjax.rnn`).
      readout_std: if set, the readout weight is N(0, readout_std) (the TCN paper uses 0.01);
        Glorot-uniform otherwise.
      forget_bias: initial LSTM forget-gate bias (LSTM archs only).
      tcn_init: TCN weight init, ``"locuslab"`` (what locuslab/TCN actually trains with: its
        N(0, 0.01) is overwritten by ``weight_norm``, leaving PyTorch's default uniform init) or
        ``"paper"`` (N(0, 0.01) as the paper states); see :meth:`seqjax.core.tcn.TCN.init`.
      residual: recurrent archs: pre-norm residual blocks instead of a plain stack (see
        :class:`seqjax.models.encoder.Encoder`; the minGRU/minLSTM/LRU papers' blocks).
      glu: with ``residual``: the LRU paper's GELU + GLU output per block (see
        :class:`seqjax.models.encoder.Encoder`; what a stack of LRUs needs to be nonlinear).
      cell_options: further arguments of the recurrent cells, e.g. ``{"chrono": 600}`` (see
        :class:`seqjax.models.encoder.Encoder`).
    """

    arch: str
    input_size: int
    output_size: int
    hidden_size: int
    num_layers: int = 1
    kernel_size: int = 2
    dropout: float = 0.0
    embed_size: int = 0
    backend: str = "auto"
    readout_std: float | None = None
    forget_bias: float = 1.0
    tcn_init: str = "locuslab"
    residual: bool = False
    cell_options: tuple = ()
    glu: bool = False

    def __post_init__(self):
        check_arch(self.arch, "SequenceModel")
        object.__setattr__(self, "cell_options", check_cell_options(
            self.cell_options, self.arch, "SequenceModel"))
        for name in ("input_size", "output_size", "hidden_size", "num_layers", "kernel_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"SequenceModel.{name} must be a positive int, got {value!r}")
        if (isinstance(self.embed_size, bool) or not isinstance(self.embed_size, int)
                or self.embed_size < 0):
            raise ValueError(f"SequenceModel.embed_size must be an int >= 0 (0: no embedding), "
                             f"got {self.embed_size!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"SequenceModel.dropout={self.dropout!r} must be in [0, 1)")
        check_backend(self.backend, "SequenceModel")
        if self.readout_std is not None and not (isinstance(self.readout_std, (int, float))
                                                 and self.readout_std > 0):
            raise ValueError(f"SequenceModel.readout_std={self.readout_std!r} must be a "
                             "positive number or None")
        self.encoder  # noqa: B018  (validates the combination: residual, arch)

    # ---------------------------------------------------------------------------------------
    @property
    def _feature_size(self) -> int:
        return self.embed_size if self.embed_size else self.input_size

    @property
    def encoder(self) -> Encoder:
        """The model body (:class:`seqjax.models.encoder.Encoder`)."""
        return Encoder(self.arch, self._feature_size, self.hidden_size, self.num_layers,
                       kernel_size=self.kernel_size, dropout=self.dropout, backend=self.backend,
                       forget_bias=self.forget_bias, tcn_init=self.tcn_init,
                       residual=self.residual, cell_options=self.cell_options,
                       glu=self.glu)

    @property
    def tcn(self) -> TCN:
        return self.encoder.tcn

    @property
    def cells(self) -> list:
        return self.encoder.cells

    @property
    def receptive_field(self) -> int | None:
        """TCN receptive field in steps (``None`` for recurrent models: unbounded)."""
        return self.encoder.receptive_field

    def init(self, key: Array) -> dict:
        """Params ``{"embed": [V, E] (with an embedding), "encoder": ..., "readout": {"w": [H, O],
        "b": [O]}}``."""
        k_emb, k_enc, k_out = jax.random.split(key, 3)
        params: dict[str, Any] = {}
        if self.embed_size:
            params["embed"] = jax.random.normal(k_emb, (self.input_size, self.embed_size)) * 0.1
        params["encoder"] = self.encoder.init(k_enc)
        shape = (self.hidden_size, self.output_size)
        if self.readout_std is None:
            w = glorot_uniform(k_out, shape)
        else:
            w = self.readout_std * jax.random.normal(k_out, shape)
        params["readout"] = {"w": w, "b": jnp.zeros((self.output_size,))}
        return params

    def check_params(self, params: Any) -> None:
        """Raises ``ValueError``/``TypeError`` unless ``params`` match :meth:`init`'s tree and
        shapes (see :func:`check_params`)."""
        check_params(self, params)

    def apply(
        self,
        params: dict,
        inputs: Array,
        lengths: Array | None = None,
        *,
        train: bool = False,
        key: Array | None = None,
    ) -> Array:
        """Outputs ``[B, T, output_size]`` for ``inputs [B, T, D]`` (or ``[B, T]`` token ids).

        ``lengths [B]`` (ints in ``[0, T]``) masks recurrent models (a causal TCN needs no mask:
        padding after a sequence cannot reach its valid outputs); inputs past each length are
        zeroed first, so padding, even NaN, changes no valid output and no gradient.
        ``train=True`` with ``dropout > 0`` needs ``key``.

        Validation: ``params`` must match :meth:`init` (tree and shapes; static, also under
        ``jit``); float inputs must be ``[B, T, input_size]`` floats; token ids (with an
        embedding) ``[B, T]`` ints in ``[0, input_size)`` at the valid steps. The id range is
        checked only where the ids are concrete: under ``jit`` an out-of-range id (a plain
        gather would clamp it and read another row) reads a row of NaN (see
        :func:`embed_tokens`), so its outputs are NaN.

        Raises:
          TypeError: float token ids, integer features, params that are not a pytree.
          ValueError: a wrong rank, feature size, lengths shape or range, ids out of range,
            params of another model.
        """
        check_params(self, params)
        if train and self.dropout > 0 and key is None:
            raise ValueError("SequenceModel.apply(train=True) with dropout > 0 needs a key")
        k_enc, k_out = (None, None) if not (train and key is not None) else jax.random.split(key)
        if self.embed_size:
            inputs, lengths = check_tokens(inputs, self.input_size, lengths, name="inputs",
                                           hint=f" (a model with embed_size={self.embed_size})")
            xs = embed_tokens(params["embed"], inputs)
        else:
            if not hasattr(inputs, "dtype"):
                inputs = np.asarray(inputs)
            shape, dtype = tuple(jnp.shape(inputs)), inputs.dtype
            if len(shape) != 3 or shape[-1] != self.input_size:
                hint = " (token ids need embed_size > 0)" if len(shape) == 2 else ""
                raise ValueError(f"inputs.shape={shape} must be (batch, steps, "
                                 f"input_size={self.input_size}){hint}")
            if not jnp.issubdtype(dtype, jnp.floating):
                raise TypeError(f"inputs.dtype={dtype} must be floating (float32 or bfloat16)")
            if lengths is not None:
                lengths = check_lengths(lengths, shape[0], shape[1])
            xs = jnp.asarray(inputs)
        if lengths is not None:  # padding never reaches a value or a gradient
            steps = xs.shape[1]
            valid = jnp.arange(steps)[None, :] < lengths[:, None]
            xs = jnp.where(valid[..., None], xs, jnp.zeros((), xs.dtype))
        hs, _ = self.encoder.apply(params["encoder"], xs, lengths, train=train, key=k_enc)
        if self.arch != "tcn":  # a TCN drops out inside its blocks only
            hs = dropout(hs, self.dropout, k_out)
        return hs @ params["readout"]["w"] + params["readout"]["b"]


def hidden_for_params(model: SequenceModel, target: int, *, max_hidden: int = 4096) -> int:
    """The hidden size that brings ``model``'s parameter count closest to ``target``.

    How the TCN paper compares architectures: "roughly the same number of parameters".
    """
    if not isinstance(model, SequenceModel):
        raise TypeError(f"model must be a SequenceModel, got {type(model).__name__}")
    for name, v in (("target", target), ("max_hidden", max_hidden)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}={v!r} must be a positive int")

    def count(h: int) -> int:
        shapes = jax.eval_shape(dataclasses.replace(model, hidden_size=h).init,
                                jax.random.PRNGKey(0))
        return param_count(shapes)

    lo, hi = 1, max_hidden  # parameter count grows monotonically with the hidden size
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [h for h in (lo - 1, lo) if h >= 1]
    return min(candidates, key=lambda h: abs(count(h) - target))

