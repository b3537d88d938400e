"""The one model body that every model class is a preset of: an encoder over time.

::

    features [B, T, D] --Encoder--> outputs [B, T, F]

``Encoder.arch`` is ``"tcn"`` (a causal TCN, :mod:`seqjax.core.tcn`), any registered cell kind
(:func:`seqjax.core.cells.cell_kinds`: a stack of layers, optionally bidirectional, run by
:func:`seqjax.stacked`), or ``"cell"`` with a given cell instance (the NTM/DNC of
:mod:`seqjax.core.memory`). The model classes only add what is theirs in front (a token
embedding, a convolution) and on top (a per-step readout, a pooled classifier head, a tied
softmax):

=====================  ======================  ===================  =========================
model                  in front                encoder              head
=====================  ======================  ===================  =========================
``SequenceModel``      embedding (optional)    ``Encoder``          dropout, per-step linear
``LanguageModel``      embedding, dropout      ``Encoder`` (carry)  dropout, (tied) softmax
``Classifier``         embedding, conv         ``Encoder`` (bi)     pool, linear
``MemoryModel``        --                      ``Encoder("cell")``  per-step linear
=====================  ======================  ===================  =========================

A cell registered with :func:`seqjax.core.cells.register_cell` is therefore at once a choice
of every model (and of the scripts, whose ``--models`` lists come from :func:`model_archs`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from seqjax.core.backend import BACKENDS
from seqjax.core.cells import Cell, cell_accepts, cell_kinds, glorot_uniform, make_cell
from seqjax.core.layers import dropout, init_stack, stacked
from seqjax.core.recurrent import length_mask, rnn
from seqjax.core.tcn import TCN

Array = jax.Array

__all__ = ["Encoder", "model_archs", "check_arch", "rms_norm"]

def model_archs() -> tuple[str, ...]:
    """Every architecture a model can be built with: ``"tcn"`` and the registered cell kinds
    (read at call time, so cells registered later are included)."""
    return ("tcn",) + cell_kinds()


def check_arch(arch: Any, owner: str, name: str = "arch") -> None:
    """Raise ``ValueError`` naming ``owner.name`` unless ``arch`` is in :func:`model_archs`."""
    archs = model_archs()
    if not isinstance(arch, str) or arch not in archs:
        raise ValueError(f"{owner}.{name}={arch!r} must be one of {archs}")


def check_backend(backend: Any, owner: str) -> None:
    """Raise ``ValueError`` naming ``owner.backend`` unless it is a backend :func:`seqjax.rnn`
    knows."""
    if backend not in BACKENDS:
        raise ValueError(f"{owner}.backend={backend!r} must be one of {BACKENDS}")


def check_cell_options(options: Any, arch: str, owner: str) -> tuple:
    """``options`` (a dict or ``(name, value)`` pairs) as sorted pairs, each a constructor
    argument of ``arch``'s cells; ``ValueError``/``TypeError`` naming ``owner.cell_options``."""
    if isinstance(options, dict):
        options = tuple(options.items())
    if not isinstance(options, (tuple, list)) or not all(
            isinstance(o, (tuple, list)) and len(o) == 2 and isinstance(o[0], str)
            for o in options):
        raise TypeError(f"{owner}.cell_options must be a dict or (name, value) pairs, got "
                        f"{options!r}")
    options = tuple(sorted(((name, value) for name, value in options), key=lambda o: o[0]))
    if options and arch in ("tcn", "cell"):
        raise ValueError(f"{owner}.cell_options={options!r} are for registered cell archs, not "
                         f"arch={arch!r}")
    for name, _ in options:
        if arch in cell_kinds() and not cell_accepts(arch, name):
            raise ValueError(f"{owner}.cell_options: the {arch!r} cell has no argument {name!r}")
    return options


@dataclasses.dataclass(frozen=True)
class Encoder:
    """Inputs ``[B, T, input_size]`` -> outputs ``[B, T, output_width]`` (static, hashable).

    Args:
      arch: ``"tcn"``, a registered cell kind, or ``"cell"`` (then ``cell`` is required).
      input_size: feature size ``D`` of the inputs.
      hidden_size: recurrent hidden size (per direction), or TCN channels per level.
      num_layers: recurrent layers, or TCN levels.
      kernel_size: TCN kernel size.
      dropout: recurrent: between layers (as PyTorch's ``dropout``); TCN: inside every block.
      backend: the recurrent backend (:func:`seqjax.rnn`).
      forget_bias: initial forget-gate bias, for the cells that have one (the LSTMs).
      tcn_init: TCN weight init (:meth:`seqjax.core.tcn.TCN.init`).
      last_size: width of the last layer (default ``hidden_size``): a tied language model's
        last layer is as wide as its embedding.
      bidirectional: run every recurrent layer both ways (outputs ``2 H`` wide).
      cell: the cell of ``arch="cell"`` (one layer; params are that cell's params).
      remat: recompute each step in the backward pass (``arch="cell"``).
      residual: recurrent stacks only: the pre-norm residual blocks of the minGRU and LRU papers
        (Feng et al. 2024, Orvieto et al. 2023) instead of a plain stack: a linear map to the
        hidden width, then per layer ``h <- h + Drop(cell(RMSNorm(h)))``.
      glu: residual blocks only: the LRU paper's position-wise output of each block,
        ``y <- (GELU(y) W_1 + b_1) * sigmoid(GELU(y) W_2 + b_2)`` after the cell (Orvieto et
        al. 2023, their ``SequenceLayer``). A cell linear in its inputs as well as its state
        (the LRU) needs it: without it a stack is linear but for the norms, and cannot multiply
        two inputs (the adding problem).
      cell_options: further constructor arguments of every layer's cell, as ``(name, value)``
        pairs or a dict, e.g. ``{"chrono": 600}`` for the LSTM's chrono initialisation; a name
        the cell does not take is a ``ValueError``.

    Params: a list with one entry per layer (``{"fw", "bw"}`` if bidirectional) for a stack;
    ``{"in": {"w": [D, H], "b": [H]}, "layers": [{"norm": [H], "cell": ...}, ...]}`` for
    residual blocks (each layer also ``"glu": {"w": [H, 2H], "b": [2H]}`` if ``glu``);
    ``{"blocks": [...]}`` for a TCN; the cell's params for ``arch="cell"``.
    """

    arch: str
    input_size: int
    hidden_size: int = 0
    num_layers: int = 1
    kernel_size: int = 2
    dropout: float = 0.0
    backend: str = "auto"
    forget_bias: float = 1.0
    tcn_init: str = "locuslab"
    last_size: int | None = None
    bidirectional: bool = False
    cell: Cell | None = None
    remat: bool = False
    residual: bool = False
    cell_options: tuple = ()
    glu: bool = False

    def __post_init__(self):
        object.__setattr__(self, "cell_options", check_cell_options(
            self.cell_options, self.arch, "Encoder"))
        if self.arch == "cell":
            if not isinstance(self.cell, Cell):
                raise TypeError(f"Encoder(arch='cell') needs a seqjax Cell, got "
                                f"{type(self.cell).__name__}")
        else:
            check_arch(self.arch, "Encoder")
        check_backend(self.backend, "Encoder")
        if self.bidirectional and self.arch == "tcn":
            raise ValueError("bidirectional=True is for recurrent archs; a TCN is causal")
        if self.residual and (self.arch in ("tcn", "cell") or self.bidirectional
                              or self._last != self.hidden_size):
            raise ValueError(f"residual=True is for a one-direction stack of cells whose layers "
                             f"are all hidden_size wide (arch={self.arch!r}, bidirectional="
                             f"{self.bidirectional}, last_size={self.last_size})")
        if self.glu and not self.residual:
            raise ValueError("glu=True is the output of residual blocks: it needs residual=True")

    # ------------------------------------------------------------------ structure
    @property
    def is_recurrent(self) -> bool:
        return self.arch != "tcn"

    @property
    def _last(self) -> int:
        return self.hidden_size if self.last_size is None else self.last_size

    @property
    def output_width(self) -> int:
        """Width ``F`` of the outputs."""
        if self.arch == "cell":
            return self.cell.hidden_size
        return self._last * (2 if self.bidirectional else 1)

    @property
    def cells(self) -> list[Cell]:
        """The recurrent cells, one per layer."""
        if self.arch == "cell":
            return [self.cell]
        if not self.is_recurrent:
            raise ValueError("a TCN encoder has no cells")
        extra = {"forget_bias": self.forget_bias} if cell_accepts(self.arch,
                                                                  "forget_bias") else {}
        extra.update(self.cell_options)
        sizes = [self.hidden_size] * (self.num_layers - 1) + [self._last]
        widths = [s * (2 if self.bidirectional else 1) for s in sizes]
        ins = [self.hidden_size if self.residual else self.input_size] + widths[:-1]
        return [make_cell(self.arch, i, h, **extra) for i, h in zip(ins, sizes)]

    @property
    def tcn(self) -> TCN:
        if self.is_recurrent:
            raise ValueError(f"a {self.arch} encoder has no TCN")
        channels = (self.hidden_size,) * (self.num_layers - 1) + (self._last,)
        return TCN(self.input_size, channels, kernel_size=self.kernel_size,
                   dropout=self.dropout)

    @property
    def receptive_field(self) -> int | None:
        """TCN: input steps one output sees; recurrent: ``None`` (unbounded)."""
        return None if self.is_recurrent else self.tcn.receptive_field

    def initial_carry(self, batch: int) -> Any:
        """Zero carries: one per layer (a ``(fw, bw)`` pair if bidirectional); the cell's carry
        for ``arch="cell"``; ``None`` for a TCN."""
        if not self.is_recurrent:
            return None
        if self.arch == "cell":
            return self.cell.initial_carry(batch)
        carries = [cell.initial_carry(batch) for cell in self.cells]
        return [(c, c) for c in carries] if self.bidirectional else carries

    def init(self, key: Array) -> Any:
        """Fresh params (see the class docstring for their layout)."""
        if self.arch == "cell":
            return self.cell.init(key)
        if self.residual:
            k_in, k_cells = jax.random.split(key)
            k_glu = jax.random.fold_in(key, 3)  # the other params as without a GLU
            shape = (self.input_size, self.hidden_size)
            layers = [{"norm": jnp.ones((self.hidden_size,)), "cell": p}
                      for p in init_stack(self.cells, k_cells)]
            if self.glu:
                glu_shape = (self.hidden_size, 2 * self.hidden_size)
                for layer, k in zip(layers, jax.random.split(k_glu, len(layers))):
                    layer["glu"] = {"w": glorot_uniform(k, glu_shape),
                                    "b": jnp.zeros(glu_shape[1:])}
            return {"in": {"w": glorot_uniform(k_in, shape), "b": jnp.zeros(shape[1:])},
                    "layers": layers}
        if self.is_recurrent:
            return init_stack(self.cells, key, bidirectional=self.bidirectional)
        return self.tcn.init(key, weight_init=self.tcn_init)

    def check_carry(self, carry: Any, batch: int) -> None:
        """Raise ``ValueError`` unless ``carry`` is shaped like :meth:`initial_carry` (batch)."""
        if carry is None or not self.is_recurrent:
            return
        if self.arch != "cell" and (not isinstance(carry, (list, tuple))
                                    or len(carry) != self.num_layers):
            raise ValueError(f"carry must be a list of {self.num_layers} per-layer carries "
                             f"(model.initial_carry(batch)), got {type(carry).__name__}"
                             + (f" of length {len(carry)}" if hasattr(carry, "__len__") else ""))
        want = _carry_shapes(self, batch)
        pairs = [(carry, want)] if self.arch == "cell" else list(zip(carry, want))
        for i, (c, w) in enumerate(pairs):
            got = [tuple(jnp.shape(a)) for a in jax.tree.leaves(c)]
            exp = [tuple(a.shape) for a in jax.tree.leaves(w)]
            if jax.tree.structure(c) != jax.tree.structure(w) or got != exp:
                raise ValueError(f"carry[{i}] shapes {got} must be {exp} (layer {i} of a "
                                 f"{self.arch} model, batch {batch})")

    # ------------------------------------------------------------------ forward
    def apply(self, params: Any, xs: Array, lengths: Array | None = None, carry: Any = None, *,
              train: bool = False, key: Array | None = None) -> tuple[Array, Any]:
        """``(outputs [B, T, F], final carry)`` for ``xs [B, T, D]``.

        ``lengths [B]`` masks a recurrent encoder (outputs past a length are zero, the carry is
        the state at the length); a causal TCN ignores them (padding after a sequence cannot
        reach its valid outputs). ``carry``: the initial carry (``None``: zeros; ignored by a
        TCN, whose final carry is ``None``). Dropout is applied only when ``train`` and a
        ``key`` is given. Validation of ``xs``, ``lengths``, ``params`` and ``carry`` is that of
        :func:`seqjax.stacked` / :func:`seqjax.rnn` / :meth:`seqjax.core.tcn.TCN.apply`.
        """
        key = key if train else None
        if self.arch == "tcn":
            return self.tcn.apply(params, xs, train=key is not None, key=key), None
        if self.arch == "cell":
            return rnn(self.cell, params, xs, seq_lengths=lengths, initial_carry=carry,
                       remat=self.remat, backend=self.backend)
        if self.residual:
            return self._residual(params, xs, lengths, carry, key)
        return stacked(self.cells, params, xs, seq_lengths=lengths, initial_carries=carry,
                       bidirectional=self.bidirectional, dropout=self.dropout, key=key,
                       backend=self.backend)

    def _residual(self, params, xs, lengths, carry, key) -> tuple[Array, list]:
        """The residual blocks: ``h = xs W + b``, then ``h <- h + Drop(cell(RMSNorm(h)))``
        (``cell`` followed by the GLU if ``glu``)."""
        h = jnp.asarray(xs) @ params["in"]["w"] + params["in"]["b"]
        carries = []
        for i, (cell, p) in enumerate(zip(self.cells, params["layers"])):
            y, c = rnn(cell, p["cell"], rms_norm(h, p["norm"]), seq_lengths=lengths,
                       initial_carry=None if carry is None else carry[i], backend=self.backend)
            if self.glu:
                u = jax.nn.gelu(y) @ p["glu"]["w"] + p["glu"]["b"]
                y = u[..., : self.hidden_size] * jax.nn.sigmoid(u[..., self.hidden_size:])
                if lengths is not None:  # padding stays zero, as the cell's outputs
                    valid = length_mask(lengths, y.shape[1], y.shape[0]).T  # [B, T]
                    y = jnp.where(valid[..., None], y, jnp.zeros((), y.dtype))
            if key is not None:
                key, sub = jax.random.split(key)
                y = dropout(y, self.dropout, sub)
            h = h + y
            carries.append(c)
        return h, carries


def rms_norm(x: Array, scale: Array, eps: float = 1e-6) -> Array:
    """``x / sqrt(mean(x^2) + eps) * scale`` over the last axis (Zhang & Sennrich 2019)."""
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (normed * scale).astype(x.dtype)


@functools.lru_cache(maxsize=64)
def _carry_shapes(encoder: Encoder, batch: int) -> Any:
    """Shapes of :meth:`Encoder.initial_carry` (cached)."""
    return jax.eval_shape(lambda: encoder.initial_carry(batch))
