"""Encoder-decoder (sequence to sequence) with attention, teacher forcing, greedy and beam search.

The model (Sutskever et al. 2014; Bahdanau et al. 2014; Luong et al. 2015):

* **Encoder**: embeddings -> a stacked, optionally bidirectional recurrent network of any cell
  kind (:func:`seqjax.core.layers.stacked`), giving ``keys [B, S, K]`` (``K = 2H`` bidirectional,
  ``H`` otherwise). With ``reverse_source`` the encoder reads every source backwards within its
  own length (Sutskever's trick); its outputs are put back in source order, so attention weights
  always index the original source positions.
* **Bridge**: the decoder's initial carry is ``tanh(W [h_fw; h_bw] + b)`` of the last encoder
  layer's final carries, one linear map per carry component (``h``, and ``c`` for LSTMs).
* **Decoder** (Luong's global attention with input feeding), one step for target token
  ``y_{t-1}``:

  .. math::
      x_t &= [E y_{t-1};\\ \\tilde h_{t-1}] \\quad (\\tilde h_{t-1}\\text{: input feeding}) \\\\
      h_t &= \\mathrm{cell}(h_{t-1}, x_t) \\\\
      c_t, a_t &= \\mathrm{attention}(h_t, \\mathrm{keys}, \\mathrm{mask}) \\\\
      \\tilde h_t &= \\tanh(W_c [c_t; h_t] + b_c) \\\\
      p(y_t \\mid y_{<t}, x) &= \\mathrm{softmax}(W_o \\tilde h_t + b_o)

  The score of the attention is additive (``"bahdanau"``), ``"dot"`` or ``"general"``
  (``"luong"``), see :mod:`seqjax.core.attention`. With ``attention="none"`` the decoder sees the
  source only through its initial state (Sutskever et al.): :math:`x_t = E y_{t-1}`,
  :math:`\\tilde h_t = h_t`.

Targets are ``[B, T]`` token ids ``y_1 .. y_n, <eos>`` padded with ``<pad>``, and
``tgt_lengths = n + 1`` (the ``<eos>`` counts); the decoder reads ``<bos>, y_1, .., y_n``.
Decoded sequences follow the same convention: tokens up to and including ``<eos>``, then
``<pad>``; a length is the number of tokens up to and including ``<eos>`` (``max_len`` if none).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from seqjax.core.attention import Attention
from seqjax.core.cells import (
    check_array,
    check_key,
    check_tree,
    dtype_of,
    glorot_uniform,
    make_cell,
    shape_of,
)
from seqjax.core.layers import init_stack, stack_cells, stacked
from seqjax.core.recurrent import _reverse_padded, check_lengths, concrete_value

Array = jax.Array

__all__ = ["Seq2Seq", "Memory", "Greedy", "Beam", "sequence_log_probs"]

ATTENTIONS = ("bahdanau", "additive", "dot", "general", "luong", "none")


class Memory(NamedTuple):
    """What the decoder reads: the encoded source of a batch (:meth:`Seq2Seq.encode`; its
    ``keys`` and ``pre`` hold zeros at masked positions, which :meth:`Seq2Seq.decode_step`
    relies on)."""

    keys: Array  #: ``[B, S, K]`` encoder outputs (in source order)
    pre: Array  #: ``[B, S, *]`` the key half of the attention score (see ``Attention.precompute``)
    mask: Array  #: ``[B, S]`` bool, ``True`` on valid source positions
    init_carry: Any  #: the decoder's initial carry (``[B, H]``, LSTMs ``([B, H], [B, H])``)


class Greedy(NamedTuple):
    """Greedy decoding of a batch."""

    tokens: Array  #: ``[B, L]`` int32, ``<pad>`` after ``<eos>``
    lengths: Array  #: ``[B]`` tokens up to and including ``<eos>`` (``L`` if none)
    log_probs: Array  #: ``[B]`` log-probability of ``tokens[:, :length]``
    weights: Array  #: ``[B, L, S]`` attention weights per output step (zeros without attention)


class Beam(NamedTuple):
    """Beam search of a batch: ``K`` hypotheses per sentence, best first."""

    tokens: Array  #: ``[B, K, L]`` int32, ``<pad>`` after ``<eos>``
    lengths: Array  #: ``[B, K]`` tokens up to and including ``<eos>`` (``L`` if unfinished)
    scores: Array  #: ``[B, K]`` ranking score ``log_probs / lengths ** length_penalty``
    log_probs: Array  #: ``[B, K]`` sum of the token log-probabilities
    finished: Array  #: ``[B, K]`` bool, the hypothesis ended with ``<eos>``


def _check_ids(name: str, ids: Any, vocab: int, lengths_name: str, lengths: Any) -> Array:
    """Validate ``ids [B, T]`` integer token ids and ``lengths [B]`` in ``[0, T]``; returns the
    lengths as ``int32 [B]`` (array-likes of ints accepted). Values are checked only when
    concrete (not under ``jit``)."""
    shape, dtype = shape_of(ids, name), dtype_of(ids, name)
    if len(shape) != 2:
        raise ValueError(f"{name}.shape={shape} must be [B, T] token ids (rank 2)")
    if not jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.bool_):
        raise TypeError(f"{name}.dtype={dtype} must be an integer dtype (token ids)")
    try:
        lengths = check_lengths(lengths, shape[0], shape[1], lengths_name, steps_name="")
    except ValueError as err:
        raise ValueError(f"{err} ({name}.shape={shape})") from None
    ids_vals = concrete_value(ids)
    if ids_vals is not None and ids_vals.size and (ids_vals.min() < 0 or ids_vals.max() >= vocab):
        raise ValueError(f"{name} holds ids outside [0, {vocab}): min {ids_vals.min()}, "
                         f"max {ids_vals.max()}")
    return lengths


@functools.lru_cache(maxsize=64)
def _param_spec(model: "Seq2Seq") -> dict:
    return jax.eval_shape(model.init, jax.random.key(0))


def _linear(p: dict, x: Array) -> Array:
    return x @ p["w"] + p["b"]


@dataclasses.dataclass(frozen=True)
class Seq2Seq:
    """Encoder-decoder with attention; a frozen (hashable) config with ``init`` / ``apply``.

    Args:
      src_vocab: source vocabulary size ``V_s``.
      tgt_vocab: target vocabulary size ``V_t``.
      embed_size: ``E``, embedding size of both sides.
      hidden_size: ``H``, the hidden size of every encoder layer (per direction) and the decoder.
      cell: cell kind of encoder and decoder (:func:`seqjax.core.cells.make_cell`: ``"lstm"``,
        ``"gru"``, ``"rnn"``, ``"peephole_lstm"``, ...).
      encoder_layers: stacked encoder layers.
      bidirectional: bidirectional encoder (outputs concatenated, ``K = 2H``).
      attention: ``"bahdanau"`` (additive), ``"dot"``, ``"general"`` (alias ``"luong"``) or
        ``"none"`` (the decoder sees only the final encoder state).
      input_feeding: feed the previous attentional state ``h~_{t-1}`` to the decoder input
        (Luong et al. 2015); attention models only.
      reverse_source: the encoder reads each source backwards (Sutskever et al. 2014).
      attn_size: hidden size of the additive score (0: ``H``).
      pad_id, bos_id, eos_id: special target ids (source padding is masked by lengths).
      backend: recurrent backend of the encoder (see :func:`seqjax.rnn`).
    """

    src_vocab: int
    tgt_vocab: int
    embed_size: int = 64
    hidden_size: int = 128
    cell: str = "lstm"
    encoder_layers: int = 1
    bidirectional: bool = True
    attention: str = "bahdanau"
    input_feeding: bool = True
    reverse_source: bool = False
    attn_size: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    backend: str = "auto"

    def __post_init__(self):
        for name in ("src_vocab", "tgt_vocab", "embed_size", "hidden_size", "encoder_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"Seq2Seq.{name} must be a positive int, got {value!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"Seq2Seq.attention={self.attention!r} must be one of {ATTENTIONS}")
        for name in ("pad_id", "bos_id", "eos_id"):
            value = getattr(self, name)
            if not 0 <= value < self.tgt_vocab:
                raise ValueError(f"Seq2Seq.{name}={value} must be in [0, tgt_vocab="
                                 f"{self.tgt_vocab})")
        make_cell(self.cell, 1, 1)  # validates the kind

    # ------------------------------------------------------------------------------------------
    # Structure
    @property
    def key_size(self) -> int:
        """``K``: the encoder output size."""
        return self.hidden_size * (2 if self.bidirectional else 1)

    @property
    def uses_attention(self) -> bool:
        return self.attention != "none"

    @property
    def encoder_cells(self) -> list:
        return stack_cells(self.cell, self.embed_size, self.hidden_size, self.encoder_layers,
                           bidirectional=self.bidirectional)

    @property
    def decoder_cell(self):
        feed = self.hidden_size if (self.uses_attention and self.input_feeding) else 0
        return make_cell(self.cell, self.embed_size + feed, self.hidden_size)

    @property
    def attention_fn(self) -> Attention | None:
        if not self.uses_attention:
            return None
        return Attention(self.attention, self.hidden_size, self.key_size, self.attn_size)

    def _carry_leaves(self) -> int:
        return len(jax.tree.leaves(self.decoder_cell.initial_carry(1)))

    def param_shapes(self) -> dict:
        """The params pytree of :meth:`init` with a ``jax.ShapeDtypeStruct`` per array."""
        return _param_spec(self)

    def check_params(self, params: Any) -> None:
        """Raise ``ValueError``/``TypeError`` naming the first missing or wrongly shaped
        parameter by its path, e.g. ``params['decoder']['w_h'].shape=(8, 24) must be
        (8, 32)``."""
        check_tree(params, self.param_shapes(), "params", self)

    # ------------------------------------------------------------------------------------------
    def init(self, key: Array) -> dict:
        """Params::

            {"src_embed": [V_s, E], "tgt_embed": [V_t, E], "encoder": [per layer],
             "bridge": [{"w": [K, H], "b": [H]} per carry component], "decoder": cell params,
             "attention": ..., "combine": {"w": [K + H, H], "b": [H]} (attention only),
             "readout": {"w": [H, V_t], "b": [V_t]}}
        """
        check_key(key)
        ks = jax.random.split(key, 8)
        h, kdim = self.hidden_size, self.key_size
        params: dict[str, Any] = {
            "src_embed": jax.random.normal(ks[0], (self.src_vocab, self.embed_size)) * 0.1,
            "tgt_embed": jax.random.normal(ks[1], (self.tgt_vocab, self.embed_size)) * 0.1,
            "encoder": init_stack(self.encoder_cells, ks[2], bidirectional=self.bidirectional),
            "bridge": [{"w": glorot_uniform(k, (kdim, h)), "b": jnp.zeros((h,))}
                       for k in jax.random.split(ks[3], self._carry_leaves())],
            "decoder": self.decoder_cell.init(ks[4]),
            "readout": {"w": glorot_uniform(ks[5], (h, self.tgt_vocab)),
                        "b": jnp.zeros((self.tgt_vocab,))},
        }
        if self.uses_attention:
            params["attention"] = self.attention_fn.init(ks[6])
            params["combine"] = {"w": glorot_uniform(ks[7], (kdim + h, h)), "b": jnp.zeros((h,))}
        return params

    # ------------------------------------------------------------------------------------------
    # Encoder
    def encode(self, params: dict, src: Array, src_lengths: Array) -> Memory:
        """Encode ``src [B, S]`` ids with ``src_lengths [B]`` into a :class:`Memory`.

        Raises:
          ValueError / TypeError: naming ``src``, ``src_lengths`` (any array-like of ints; values
            checked when not under ``jit``) or the ``params`` entry whose shape is wrong.
        """
        lengths = _check_ids("src", src, self.src_vocab, "src_lengths", src_lengths)
        self.check_params(params)
        return self._encode(params, jnp.asarray(src), lengths)

    def _encode(self, params: dict, src: Array, src_lengths: Array) -> Memory:
        b, s = src.shape
        xs = jnp.take(params["src_embed"], src, axis=0)  # [B, S, E]
        if self.reverse_source:
            xs = jnp.swapaxes(_reverse_padded(jnp.swapaxes(xs, 0, 1), src_lengths), 0, 1)
        keys, carries = stacked(self.encoder_cells, params["encoder"], xs,
                                seq_lengths=src_lengths, bidirectional=self.bidirectional,
                                backend=self.backend)
        if self.reverse_source:  # back to source order, so that weights index the source
            keys = jnp.swapaxes(_reverse_padded(jnp.swapaxes(keys, 0, 1), src_lengths),
                                0, 1)
        last = carries[-1]
        if self.bidirectional:
            fw, bw = (jax.tree.leaves(c) for c in last)
            parts = [jnp.concatenate([f, r], axis=-1) for f, r in zip(fw, bw)]
        else:
            parts = jax.tree.leaves(last)
        leaves = [jnp.tanh(_linear(p, x)) for p, x in zip(params["bridge"], parts)]
        treedef = jax.tree.structure(self.decoder_cell.initial_carry(1))
        init_carry = jax.tree.unflatten(treedef, leaves)
        mask = jnp.arange(s)[None, :] < src_lengths[:, None]
        att = self.attention_fn
        pre = att._precompute(params["attention"], keys) if att is not None else keys
        # zeros at the padding once here (keys are already 0 there), so that decode_step needs
        # no masking of keys and pre at every step
        pre = jnp.where(mask[..., None], pre, jnp.zeros((), pre.dtype))
        return Memory(keys=keys, pre=pre, mask=mask, init_carry=init_carry)

    # ------------------------------------------------------------------------------------------
    # Decoder
    def initial_state(self, memory: Memory) -> tuple[Any, Array]:
        """The decoder state ``(carry, h~ [B, H])`` before the first step (``h~ = 0``)."""
        if not isinstance(memory, Memory):
            raise TypeError(f"memory must be a seq2seq Memory (from encode), got "
                            f"{type(memory).__name__}")
        b = memory.keys.shape[0]
        return memory.init_carry, jnp.zeros((b, self.hidden_size), memory.keys.dtype)

    def decode_step(self, params: dict, memory: Memory, state: tuple[Any, Array],
                    y_prev: Array) -> tuple[tuple[Any, Array], Array, Array]:
        """One decoder step for previous tokens ``y_prev [B]``.

        Returns ``(state, logits [B, V_t], attention weights [B, S])`` (zero weights without
        attention).

        Raises:
          ValueError / TypeError: ``params``, ``memory`` (a :class:`Memory`), ``state`` or
            ``y_prev`` (integer ``[B]``) of the wrong kind or shape (checked on static shapes,
            so also when traced inside a scan).
        """
        self.check_params(params)
        if not isinstance(memory, Memory):
            raise TypeError(f"memory must be a seq2seq Memory (from encode), got "
                            f"{type(memory).__name__}")
        b, src = check_array(memory.keys, "memory.keys", ("B", "S", self.key_size))[:2]
        att = self.attention_fn
        check_array(memory.pre, "memory.pre",
                    (b, src, att._pre_size if att is not None else self.key_size))
        check_array(memory.mask, "memory.mask", (b, src))
        y_shape, y_dtype = shape_of(y_prev, "y_prev"), dtype_of(y_prev, "y_prev")
        if y_shape != (b,):
            raise ValueError(f"y_prev.shape={y_shape} must be ({b},) (one token per sentence)")
        if not jnp.issubdtype(y_dtype, jnp.integer):
            raise TypeError(f"y_prev.dtype={y_dtype} must be an integer dtype (token ids)")
        if not isinstance(state, tuple) or len(state) != 2:
            raise ValueError("state must be the pair (carry, h~) of initial_state/decode_step")
        carry, feed = state
        if shape_of(feed, "state[1]") != (b, self.hidden_size):
            raise ValueError(f"state[1].shape={shape_of(feed, 'state[1]')} must be "
                             f"({b}, {self.hidden_size}) (h~)")
        x = jnp.take(params["tgt_embed"], y_prev, axis=0)
        if self.uses_attention and self.input_feeding:
            x = jnp.concatenate([x, feed], axis=-1)
        carry, h = self.decoder_cell(params["decoder"], carry, x)
        if att is not None:
            ctx, weights = att._attend(params["attention"], h, memory.keys, memory.pre,
                                       memory.mask, zero_masked=False)
            out = jnp.tanh(_linear(params["combine"], jnp.concatenate([ctx, h], axis=-1)))
        else:
            weights = jnp.zeros(memory.mask.shape, h.dtype)
            out = h
        return (carry, out), _linear(params["readout"], out), weights

    def decoder_inputs(self, tgt: Array) -> Array:
        """``[<bos>, y_1, .., y_{T-1}]``: the teacher-forced decoder inputs for ``tgt [B, T]``."""
        shape, dtype = shape_of(tgt, "tgt"), dtype_of(tgt, "tgt")
        if len(shape) != 2:
            raise ValueError(f"tgt.shape={shape} must be [B, T] token ids (rank 2)")
        if not jnp.issubdtype(dtype, jnp.integer):
            raise TypeError(f"tgt.dtype={dtype} must be an integer dtype (token ids)")
        tgt = jnp.asarray(tgt)
        bos = jnp.full((tgt.shape[0], 1), self.bos_id, tgt.dtype)
        return jnp.concatenate([bos, tgt[:, :-1]], axis=1)

    def apply(self, params: dict, src: Array, src_lengths: Array, tgt: Array,
              tgt_lengths: Array | None = None) -> tuple[Array, Array]:
        """Teacher forcing: ``(logits [B, T, V_t], attention weights [B, T, S])`` for targets
        ``tgt [B, T]`` (``y_1 .. y_n, <eos>``; the decoder reads them shifted right behind
        ``<bos>``). ``tgt_lengths`` is only validated (the steps are causal).

        Raises:
          ValueError / TypeError: naming ``src``, ``tgt``, their lengths (array-likes of ints;
            values checked when not under ``jit``) or the ``params`` entry of the wrong shape.
        """
        lengths = _check_ids("src", src, self.src_vocab, "src_lengths", src_lengths)
        _check_ids("tgt", tgt, self.tgt_vocab, "tgt_lengths",
                   tgt_lengths if tgt_lengths is not None else np.zeros(shape_of(tgt, "tgt")[:1],
                                                                        np.int32))
        if shape_of(src, "src")[0] != shape_of(tgt, "tgt")[0]:
            raise ValueError(f"src.shape={shape_of(src, 'src')} and "
                             f"tgt.shape={shape_of(tgt, 'tgt')} must have the same batch size")
        self.check_params(params)
        return self._teacher_forced(params, jnp.asarray(src), lengths, jnp.asarray(tgt))

    def _teacher_forced(self, params, src, src_lengths, tgt):
        memory = self._encode(params, src, src_lengths)
        y_in = jnp.swapaxes(self.decoder_inputs(tgt), 0, 1)  # [T, B]

        def body(state, y_prev):
            state, logits, weights = self.decode_step(params, memory, state, y_prev)
            return state, (logits, weights)

        _, (logits, weights) = jax.lax.scan(body, self.initial_state(memory), y_in)
        return jnp.swapaxes(logits, 0, 1), jnp.swapaxes(weights, 0, 1)

    def loss(self, params: dict, src: Array, src_lengths: Array, tgt: Array,
             tgt_lengths: Array) -> tuple[Array, dict[str, Array]]:
        """Teacher-forced masked cross-entropy, the mean over the ``sum(tgt_lengths)`` tokens:

        .. math::
            \\mathcal L = -\\frac{1}{\\sum_b n_b} \\sum_b \\sum_{t < n_b}
                \\log p(y_{b,t} \\mid y_{b,<t}, x_b)

        Returns ``(loss, {"token_acc": ..., "seq_acc": ...})`` (teacher-forced argmax accuracy
        per token, and the fraction of targets whose every token is right).
        """
        if tgt_lengths is None:
            raise TypeError("tgt_lengths is required by loss (the tokens to score)")
        logits, _ = self.apply(params, src, src_lengths, tgt, tgt_lengths)
        tgt = jnp.asarray(tgt)
        tgt_lengths = jnp.asarray(np.asarray(tgt_lengths) if isinstance(tgt_lengths, (list, tuple))
                                  else tgt_lengths)
        mask = jnp.arange(tgt.shape[1])[None, :] < tgt_lengths[:, None]
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, tgt[..., None], axis=-1)[..., 0]
        count = jnp.maximum(jnp.sum(mask), 1)
        loss = jnp.sum(jnp.where(mask, nll, 0.0)) / count
        right = (jnp.argmax(logits, axis=-1) == tgt) | ~mask
        token_acc = jnp.sum(right & mask) / count
        seq_acc = jnp.mean(jnp.all(right, axis=1))
        return loss, {"token_acc": token_acc, "seq_acc": seq_acc}

    # ------------------------------------------------------------------------------------------
    # Decoding
    def greedy(self, params: dict, src: Array, src_lengths: Array, max_len: int) -> Greedy:
        """Greedy decoding of ``max_len`` steps (jitted); see :class:`Greedy`."""
        lengths = _check_ids("src", src, self.src_vocab, "src_lengths", src_lengths)
        _check_max_len(max_len)
        self.check_params(params)
        return _greedy(self, params, jnp.asarray(src), lengths, max_len)

    def beam_search(self, params: dict, src: Array, src_lengths: Array, max_len: int, *,
                    beam_size: int = 4, length_penalty: float = 0.0) -> Beam:
        """Batched beam search (jitted), hypotheses ranked by ``log p / length ** alpha``.

        Every step extends the ``K`` alive hypotheses of each sentence by every token and keeps
        the ``2K`` best candidates by log-probability: those among the first ``K`` that end in
        ``<eos>`` join the finished pool (the ``K`` best by score are kept; a finished hypothesis
        never grows again), the ``K`` best that do not end stay alive (fairseq's scheme). After
        ``max_len`` steps the result is the finished pool, completed with the best alive
        hypotheses when fewer than ``K`` finished.

        Args:
          params, src, src_lengths: as for :meth:`greedy`.
          max_len: decoding steps ``L`` (the longest output, ``<eos>`` included).
          beam_size: ``K``; ``K = 1`` returns the greedy sequence.
          length_penalty: ``alpha`` of the length normalisation (0: raw log-probability,
            1: per-token mean).

        Returns:
          :class:`Beam`, best first.
        """
        lengths = _check_ids("src", src, self.src_vocab, "src_lengths", src_lengths)
        _check_max_len(max_len)
        self.check_params(params)
        if not isinstance(beam_size, int) or not 1 <= beam_size < self.tgt_vocab:
            raise ValueError(f"beam_size={beam_size!r} must be an int in [1, tgt_vocab="
                             f"{self.tgt_vocab})")
        if not length_penalty >= 0:
            raise ValueError(f"length_penalty={length_penalty!r} must be >= 0")
        return _beam_search(self, params, jnp.asarray(src), lengths, max_len, beam_size,
                            float(length_penalty))


def _check_max_len(max_len: Any) -> None:
    if not isinstance(max_len, int) or isinstance(max_len, bool) or max_len < 1:
        raise ValueError(f"max_len={max_len!r} must be a positive int")


@functools.partial(jax.jit, static_argnums=(0, 4))
def _greedy(model: Seq2Seq, params, src, src_lengths, max_len: int) -> Greedy:
    memory = model._encode(params, src, src_lengths)
    b = src.shape[0]

    def body(carry, _):
        state, y_prev, done = carry
        state, logits, weights = model.decode_step(params, memory, state, y_prev)
        logp = jax.nn.log_softmax(logits, axis=-1)
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        tok_lp = jnp.take_along_axis(logp, tok[:, None], axis=-1)[:, 0]
        out = jnp.where(done, model.pad_id, tok)
        live = ~done
        return (state, tok, done | (tok == model.eos_id)), (out, live, jnp.where(live, tok_lp, 0.0),
                                                             weights)

    init = (model.initial_state(memory), jnp.full((b,), model.bos_id, jnp.int32),
            jnp.zeros((b,), bool))
    _, (tokens, live, lps, weights) = jax.lax.scan(body, init, None, length=max_len)
    return Greedy(tokens=tokens.T, lengths=jnp.sum(live, axis=0).astype(jnp.int32),
                  log_probs=jnp.sum(lps, axis=0), weights=jnp.swapaxes(weights, 0, 1))


def _take(x: Array, idx: Array) -> Array:
    """``x [B, N, ...]`` gathered along axis 1 by ``idx [B, M]`` -> ``[B, M, ...]``."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _beam_search(model: Seq2Seq, params, src, src_lengths, max_len: int, k: int,
                 alpha: float) -> Beam:
    b, v, big_l = src.shape[0], model.tgt_vocab, max_len
    memory = model._encode(params, src, src_lengths)
    memory = jax.tree.map(lambda x: jnp.repeat(x, k, axis=0), memory)  # [B*K, ...]
    neg = jnp.float32(-jnp.inf)

    def norm(lp, length):
        return lp / jnp.asarray(length, jnp.float32) ** alpha if alpha else lp

    def gather_state(state, origin):  # state leaves [B*K, ...], origin [B, K]
        def g(x):
            x = x.reshape((b, k) + x.shape[1:])
            return _take(x, origin).reshape((b * k,) + x.shape[2:])
        return jax.tree.map(g, state)

    def body(carry, t):
        state, y_prev, a_seq, a_lp, f_seq, f_score, f_lp, f_len = carry
        state, logits, _ = model.decode_step(params, memory, state, y_prev.reshape(b * k))
        logp = jax.nn.log_softmax(logits, axis=-1).reshape(b, k, v)
        cand = (a_lp[:, :, None] + logp).reshape(b, k * v)
        vals, idx = jax.lax.top_k(cand, 2 * k)  # [B, 2K], best first
        origin, tok = idx // v, (idx % v).astype(jnp.int32)
        seqs = _take(a_seq, origin).at[:, :, t].set(tok)  # [B, 2K, L]
        is_eos = tok == model.eos_id
        # alive: the K best candidates that did not end
        a_vals, a_idx = jax.lax.top_k(jnp.where(is_eos, neg, vals), k)
        # only an <eos> ranked among the K best candidates finishes (as fairseq): with K = 1
        # this is greedy decoding
        is_eos = is_eos & (jnp.arange(2 * k) < k)[None, :]
        new_state = gather_state(state, _take(origin, a_idx))
        # finished: the K best of the old pool and the candidates that ended now
        pool_score = jnp.concatenate([f_score, jnp.where(is_eos, norm(vals, t + 1), neg)], 1)
        pool_lp = jnp.concatenate([f_lp, jnp.where(is_eos, vals, neg)], 1)
        pool_len = jnp.concatenate([f_len, jnp.full((b, 2 * k), t + 1, jnp.int32)], 1)
        pool_seq = jnp.concatenate([f_seq, seqs], 1)
        f_score, f_idx = jax.lax.top_k(pool_score, k)
        carry = (new_state, _take(tok, a_idx), _take(seqs, a_idx), a_vals,
                 _take(pool_seq, f_idx), f_score, _take(pool_lp, f_idx), _take(pool_len, f_idx))
        return carry, None

    init_state = model.initial_state(memory)
    a_lp0 = jnp.where(jnp.arange(k)[None, :] == 0, 0.0, neg) * jnp.ones((b, 1))
    pad_seq = jnp.full((b, k, big_l), model.pad_id, jnp.int32)
    init = (init_state, jnp.full((b, k), model.bos_id, jnp.int32), pad_seq, a_lp0,
            pad_seq, jnp.full((b, k), neg), jnp.full((b, k), neg), jnp.zeros((b, k), jnp.int32))
    carry, _ = jax.lax.scan(body, init, jnp.arange(big_l))
    _, _, a_seq, a_lp, f_seq, f_score, f_lp, f_len = carry

    # The finished pool (sorted), completed by the alive hypotheses (sorted; all of length L).
    n_fin = jnp.sum(jnp.isfinite(f_score), axis=1, keepdims=True)  # [B, 1]
    slot = jnp.arange(k)[None, :]
    from_fin = slot < n_fin
    a_slot = jnp.clip(slot - n_fin, 0, k - 1)
    pick = lambda f, a: jnp.where(  # noqa: E731
        from_fin.reshape(from_fin.shape + (1,) * (f.ndim - 2)), f, _take(a, a_slot))
    return Beam(tokens=pick(f_seq, a_seq),
                lengths=pick(f_len, jnp.full((b, k), big_l, jnp.int32)),
                scores=pick(f_score, norm(a_lp, big_l)),
                log_probs=pick(f_lp, a_lp),
                finished=from_fin)


def sequence_log_probs(model: Seq2Seq, params: dict, src: Array, src_lengths: Array,
                       tgt: Array, tgt_lengths: Array) -> Array:
    """``[B]`` log-probabilities of whole targets under teacher forcing: the sum over
    ``t < tgt_lengths[b]`` of ``log p(y_t | y_<t, x)`` (scores hypotheses, checks beam search).

    Raises:
      TypeError: ``model`` is not a :class:`Seq2Seq`; and as :meth:`Seq2Seq.apply`.
    """
    if not isinstance(model, Seq2Seq):
        raise TypeError(f"model must be a Seq2Seq, got {type(model).__name__}")
    if tgt_lengths is None:
        raise TypeError("tgt_lengths is required by sequence_log_probs (the tokens to score)")
    logits, _ = model.apply(params, src, src_lengths, tgt, tgt_lengths)
    logp = jax.nn.log_softmax(logits, axis=-1)
    tok = jnp.take_along_axis(logp, jnp.asarray(tgt)[..., None], axis=-1)[..., 0]
    tgt_lengths = jnp.asarray(np.asarray(tgt_lengths) if isinstance(tgt_lengths, (list, tuple))
                              else tgt_lengths)
    mask = jnp.arange(tok.shape[1])[None, :] < tgt_lengths[:, None]
    return jnp.sum(jnp.where(mask, tok, 0.0), axis=1)
