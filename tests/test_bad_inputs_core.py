"""No bad input reaches the user as a traceback (issue #17): the functional core.

A table-driven sweep over the public entry points of the cells, ``rnn``, the layers, the TCN,
attention, seq2seq, the torch interop, the memory cells (NTM, DNC and their addressing
functions) and the NNX modules: each wrong shape, dtype, rank, kind or value must raise a
``ValueError``/``TypeError`` whose message names the argument (or the offending value), never
a deep jax/numpy error. Then the value tests: padding holding NaN/inf changes neither values nor
gradients (``rnn``, layers, TCN, attention), and the DNC's pairwise allocation equals the sort
at zero usage, values and gradients finite.

``COVERED`` lists the public names the sweep exercises, qualified by module
(``"seqjax.rnn"``, ``"seqjax.core.memory.dnc.link_update"``, ``"seqjax.nn.LSTM"``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import seqjax
from seqjax import nn as sjnn
from seqjax.core import attention as att_lib
from seqjax.core import interop, recurrent
from seqjax.core import tcn as tcn_lib
from seqjax.core.cells import (
    GRU,
    LSTM,
    PeepholeLSTM,
    SimpleRNN,
    glorot_uniform,
    make_cell,
    orthogonal,
)
from seqjax.core.memory import DNC, NTM, addressing, dnc, run_with_states
from seqjax.models import MemoryModel
from seqjax.models import seq2seq as s2s

KEY = jax.random.PRNGKey(0)
B, T, D, H = 2, 5, 3, 4

COVERED = {
    # seqjax (top level) and seqjax.core.recurrent
    "seqjax.rnn", "seqjax.length_mask", "seqjax.reverse_padded",
    "seqjax.core.recurrent.check_lengths",
    # seqjax.core.cells
    "seqjax.Cell", "seqjax.SimpleRNN", "seqjax.LSTM", "seqjax.PeepholeLSTM", "seqjax.GRU",
    "seqjax.make_cell", "seqjax.core.cells.glorot_uniform", "seqjax.core.cells.orthogonal",
    # seqjax.core.layers
    "seqjax.bidirectional", "seqjax.stacked", "seqjax.pyramid", "seqjax.reduce_time",
    "seqjax.init_stack", "seqjax.stack_cells",
    # seqjax.core.tcn
    "seqjax.core.tcn.TCN", "seqjax.core.tcn.causal_conv1d", "seqjax.core.tcn.receptive_field",
    "seqjax.core.tcn.weight_norm",
    # seqjax.core.attention
    "seqjax.core.attention.Attention", "seqjax.core.attention.attention",
    "seqjax.core.attention.masked_softmax",
    # seqjax.models.seq2seq
    "seqjax.models.seq2seq.Seq2Seq", "seqjax.models.seq2seq.sequence_log_probs",
    # seqjax.core.interop
    "seqjax.core.interop.from_torch", "seqjax.core.interop.to_torch",
    # seqjax.core.memory
    "seqjax.core.memory.NTM", "seqjax.core.memory.DNC", "seqjax.core.memory.MemoryCell",
    "seqjax.core.memory.MemoryModel", "seqjax.core.memory.run_with_states",
    "seqjax.core.memory.dnc.usage_update", "seqjax.core.memory.dnc.allocation_weighting",
    "seqjax.core.memory.dnc.write_weighting", "seqjax.core.memory.dnc.link_update",
    "seqjax.core.memory.dnc.precedence_update", "seqjax.core.memory.dnc.directional_weightings",
    "seqjax.core.memory.dnc.read_weighting",
    "seqjax.core.memory.addressing.cosine_similarity",
    "seqjax.core.memory.addressing.content_weighting",
    "seqjax.core.memory.addressing.interpolate", "seqjax.core.memory.addressing.circular_shift",
    "seqjax.core.memory.addressing.sharpen", "seqjax.core.memory.addressing.ntm_address",
    "seqjax.core.memory.addressing.read", "seqjax.core.memory.addressing.erase_and_add",
    # seqjax.nn
    "seqjax.nn.Recurrent", "seqjax.nn.RNN", "seqjax.nn.LSTM", "seqjax.nn.GRU", "seqjax.nn.TCN",
    "seqjax.nn.Memory", "seqjax.nn.NTM", "seqjax.nn.DNC", "seqjax.nn.Seq2Seq",
}


# --------------------------------------------------------------------------------------------
# Small objects, built once. The sweep never needs real weights: params are numpy arrays of the
# right shapes (from jax.eval_shape, nothing compiled), so every case fails in Python before any
# computation and the whole sweep stays fast.
# --------------------------------------------------------------------------------------------


def numpy_like(spec, scale=0.0, seed=0):
    """numpy arrays with the shapes of the pytree ``spec`` (``scale * N(0, 1)``, or zeros)."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (scale * rng.standard_normal(s.shape)).astype(np.float32),
                        spec)


def fake_params(init, scale=0.0, seed=0):
    return numpy_like(jax.eval_shape(init, KEY), scale, seed)


@functools.cache
def lstm():
    cell = LSTM(D, H)
    return cell, fake_params(cell.init)


@functools.cache
def gru():
    cell = GRU(D, H)
    return cell, fake_params(cell.init)


@functools.cache
def srnn():
    cell = SimpleRNN(D, H)
    return cell, fake_params(cell.init)


@functools.cache
def peep():
    cell = PeepholeLSTM(D, H)
    return cell, fake_params(cell.init)


def xs(shape=(B, T, D), dtype=np.float32):
    return np.ones(shape, dtype)


def z(*shape):
    return np.full(shape, 0.2, np.float32)


@functools.cache
def bidi():
    cell, p = lstm()
    return cell, {"fw": p, "bw": p}


@functools.cache
def stack2():
    cells = seqjax.stack_cells("gru", D, H, 2)
    return cells, fake_params(lambda k: seqjax.init_stack(cells, k))


@functools.cache
def pyr():
    cell = LSTM(2 * D, H)
    p = fake_params(cell.init)
    return cell, {"fw": p, "bw": p}


@functools.cache
def tcn():
    cfg = tcn_lib.TCN(D, (4, 4), kernel_size=2, dropout=0.1)
    return cfg, fake_params(cfg.init)


def tcn_with(path, value):
    """The TCN params with ``params['blocks'][i][name][leaf]`` (``path``) replaced (the whole
    ``[name]`` entry removed if ``leaf`` is None)."""
    _, params = tcn()
    i, name, leaf = path
    blocks = [dict(b) for b in params["blocks"]]
    if leaf is None:
        del blocks[i][name]
    else:
        blocks[i][name] = dict(blocks[i][name], **{leaf: value})
    return {"blocks": blocks}


@functools.cache
def bahdanau():
    att = att_lib.Attention("bahdanau", 4, 6, attn_size=5)
    return att, fake_params(att.init)


@functools.cache
def general():
    att = att_lib.Attention("general", 4, 6)
    return att, fake_params(att.init)


QUERY, KEYS = z(B, 4), z(B, T, 6)
MASK = np.arange(T)[None, :] < np.array([5, 3])[:, None]


@functools.cache
def seq2seq():
    model = s2s.Seq2Seq(src_vocab=11, tgt_vocab=9, embed_size=4, hidden_size=5, cell="gru",
                        attention="bahdanau")
    return model, numpy_like(model.param_shapes())


@functools.cache
def s2s_memory():
    """A decoder :class:`Memory` of the right shapes, built without running the encoder."""
    return s2s.Memory(keys=z(B, 4, 10), pre=z(B, 4, 5), mask=np.ones((B, 4), bool),
                      init_carry=z(B, 5))


SRC = np.array([[3, 4, 5, 6], [7, 8, 0, 0]], np.int32)
TGT = np.array([[3, 4, 2], [5, 2, 0]], np.int32)


def lstm_state_dict(layers=1, hidden=H, inputs=D, gates=4, bidi=False):
    rng = np.random.default_rng(0)
    out = {}
    for k in range(layers):
        d = inputs if k == 0 else hidden * (2 if bidi else 1)
        for suffix in ("", "_reverse") if bidi else ("",):
            out[f"weight_ih_l{k}{suffix}"] = rng.normal(size=(gates * hidden, d))
            out[f"weight_hh_l{k}{suffix}"] = rng.normal(size=(gates * hidden, hidden))
            out[f"bias_ih_l{k}{suffix}"] = rng.normal(size=(gates * hidden,))
            out[f"bias_hh_l{k}{suffix}"] = rng.normal(size=(gates * hidden,))
    return out


@functools.cache
def ntm():
    cell = NTM(D, controller_size=6, memory_size=5, word_size=3)
    return cell, fake_params(cell.init)


def carry_of(cell, batch):
    """``cell.initial_carry(batch)`` as numpy arrays (nothing computed)."""
    return numpy_like(jax.eval_shape(lambda: cell.initial_carry(batch)))


@functools.cache
def dnc_cell():
    cell = DNC(D, controller_size=6, memory_size=5, word_size=3, num_reads=2)
    return cell, fake_params(cell.init)


@functools.cache
def memory_model():
    cell, _ = ntm()
    model = MemoryModel(cell, output_size=2)
    return model, fake_params(model.init)


@functools.cache
def nn_modules():
    """The NNX modules with abstract params (``nnx.eval_shape``: nothing initialised)."""
    def build(f):
        return nnx.eval_shape(lambda: f(nnx.Rngs(0)))

    return {
        "lstm": build(lambda r: sjnn.LSTM(D, H, rngs=r)),
        "gru": build(lambda r: sjnn.GRU(D, H, bidirectional=True, rngs=r)),
        "rnn": build(lambda r: sjnn.RNN(D, H, num_layers=2, rngs=r)),
        "tcn": build(lambda r: sjnn.TCN(D, (4,), rngs=r)),
        "ntm": build(lambda r: sjnn.NTM(D, controller_size=6, memory_size=5, word_size=3,
                                        rngs=r)),
        "dnc": build(lambda r: sjnn.DNC(D, controller_size=6, memory_size=5, word_size=3,
                                        num_reads=2, rngs=r)),
        "s2s": build(lambda r: sjnn.Seq2Seq(11, 9, embed_size=4, hidden_size=5, cell="gru",
                                            rngs=r)),
    }


# --------------------------------------------------------------------------------------------
# The sweep: (id, thunk, exception type, message pattern)
# --------------------------------------------------------------------------------------------


def _rnn(cell_fn=lstm, x=None, **kw):
    cell, params = cell_fn()
    params = kw.pop("params", params)
    return seqjax.rnn(cell, params, xs() if x is None else x, **kw)


CASES = [
    # ---- rnn: lengths (array-likes accepted, then checked) --------------------------------
    ("rnn-seq_lengths-float-list", lambda: _rnn(seq_lengths=[3.0, 5.0]), TypeError,
     r"seq_lengths\.dtype=float64 must be an integer"),
    ("rnn-seq_lengths-float-array", lambda: _rnn(seq_lengths=np.array([3, 5], np.float32)),
     TypeError, r"seq_lengths\.dtype=float32"),
    ("rnn-seq_lengths-bool", lambda: _rnn(seq_lengths=np.array([True, False])), TypeError,
     r"seq_lengths\.dtype=bool"),
    ("rnn-seq_lengths-list-too-long", lambda: _rnn(seq_lengths=[3, 6]), ValueError,
     r"seq_lengths must lie in \[0, T=5\], got seq_lengths\[1\]=6"),
    ("rnn-seq_lengths-tuple-negative", lambda: _rnn(seq_lengths=(-1, 5)), ValueError,
     r"seq_lengths\[0\]=-1"),
    ("rnn-seq_lengths-wrong-batch", lambda: _rnn(seq_lengths=[3]), ValueError,
     r"seq_lengths\.shape=\(1,\) must be \(2,\)"),
    ("rnn-seq_lengths-rank2", lambda: _rnn(seq_lengths=np.ones((2, 1), np.int32)), ValueError,
     r"seq_lengths\.shape=\(2, 1\)"),
    ("rnn-seq_lengths-ragged", lambda: _rnn(seq_lengths=[[1], [2, 3]]), TypeError,
     r"seq_lengths must be an array"),
    ("rnn-seq_lengths-time-major-batch",
     lambda: _rnn(x=xs((T, B, D)), seq_lengths=[1, 2, 3, 4, 5], time_major=True), ValueError,
     r"seq_lengths\.shape=\(5,\) must be \(2,\)"),
    ("rnn-seq_lengths-float-under-jit",
     lambda: jax.jit(lambda lens: _rnn(seq_lengths=lens))(np.array([1.0, 2.0], np.float32)),
     TypeError,
     r"seq_lengths\.dtype=float32"),
    # ---- rnn: xs, params, carry ------------------------------------------------------------
    ("rnn-xs-rank2", lambda: _rnn(x=xs((B, D))), ValueError, r"xs\.shape=\(2, 3\) must be"),
    ("rnn-xs-int", lambda: _rnn(x=xs(dtype=jnp.int32)), TypeError, r"xs\.dtype=int32"),
    ("rnn-xs-list", lambda: _rnn(x=[[[1.0] * D] * T] * B), TypeError, r"xs must be an array"),
    ("rnn-xs-features", lambda: _rnn(x=xs((B, T, 7))), ValueError,
     r"feature size 7 != cell\.input_size=3"),
    ("rnn-params-w_h-shape", lambda: _rnn(params=dict(lstm()[1], w_h=z(H, 12))), ValueError,
     r"params\['w_h'\]\.shape=\(4, 12\) must be \(4, 16\)"),
    ("rnn-params-missing-key", lambda: _rnn(gru, params={"w_x": z(D, 12)}), ValueError,
     r"lack \['b_h', 'b_x', 'w_h'\]"),
    ("rnn-params-leaf-not-array", lambda: _rnn(srnn, params=dict(srnn()[1], b=None)), TypeError,
     r"params\['b'\] must be an array"),
    ("rnn-initial_carry-batch", lambda: _rnn(initial_carry=(z(3, H), z(3, H))), ValueError,
     r"initial_carry shapes \(\(3, 4\), \(3, 4\)\) must be \(\(2, 4\), \(2, 4\)\)"),
    ("rnn-initial_carry-structure", lambda: _rnn(initial_carry=z(B, H)), ValueError,
     r"initial_carry shapes"),
    # ---- cells -----------------------------------------------------------------------------
    ("LSTM.init-key-int", lambda: LSTM(D, H).init(0), TypeError, r"key must be one PRNG key"),
    ("GRU.init-key-shape", lambda: GRU(D, H).init(np.ones(3, np.uint32)), TypeError,
     r"key must be one PRNG key.*shape=\(3,\)"),
    ("SimpleRNN.init-key-batch-of-keys", lambda: SimpleRNN(D, H).init(np.zeros((2, 2), np.uint32)),
     TypeError, r"key must be one PRNG key"),
    ("LSTM.initial_carry-negative-batch", lambda: LSTM(D, H).initial_carry(-1), ValueError,
     r"batch=-1"),
    ("GRU.initial_carry-float-batch", lambda: GRU(D, H).initial_carry(2.0), ValueError,
     r"batch=2\.0"),
    ("LSTM.step-gx-width", lambda: lstm()[0].step(lstm()[1], carry_of(lstm()[0], B), z(B, 12)),
     ValueError,
     r"gx_t\.shape=\(2, 12\) must be \[B, 16\]"),
    ("LSTM.step-carry-batch", lambda: lstm()[0].step(lstm()[1], (z(1, H), z(1, H)), z(B, 16)),
     ValueError, r"carry shapes \(\(1, 4\), \(1, 4\)\) must be \(\(2, 4\), \(2, 4\)\)"),
    ("GRU.step-carry-tuple", lambda: gru()[0].step(gru()[1], (z(B, H), z(B, H)), z(B, 12)),
     ValueError, r"carry shapes"),
    ("SimpleRNN.__call__-x-width", lambda: srnn()[0](srnn()[1], z(B, H), z(B, 5)), ValueError,
     r"x_t\.shape=\(2, 5\) must be \[B, 3\]"),
    ("SimpleRNN.step-params-bias", lambda: srnn()[0].step(dict(srnn()[1], b=z(3)), z(B, H),
                                                          z(B, H)), ValueError,
     r"params\['b'\]\.shape=\(3,\) must be \(4,\)"),
    ("PeepholeLSTM.check_params-no-peepholes", lambda: peep()[0].check_params(lstm()[1]),
     ValueError, r"lack \['p_f', 'p_i', 'p_o'\]"),
    ("PeepholeLSTM.project-xs-width", lambda: peep()[0].project(peep()[1], z(T, B, 7)),
     ValueError, r"xs\.shape=\(5, 2, 7\) must be \[\.\.\., 3\]"),
    ("Cell.check_params-not-dict", lambda: gru()[0].check_params([gru()[1]]), TypeError,
     r"params must be a dict"),
    ("make_cell-unknown-kind", lambda: make_cell("transformer", D, H), ValueError,
     r"unknown cell kind 'transformer'"),
    ("make_cell-kind-not-str", lambda: make_cell(["lstm"], D, H), TypeError,
     r"kind=\['lstm'\] must be a str"),
    ("LSTM-hidden-size", lambda: LSTM(D, 0), ValueError,
     r"LSTM.hidden_size=0 must be a positive int"),
    ("glorot_uniform-rank1", lambda: glorot_uniform(KEY, (3,)), ValueError, r"1-dimensional"),
    ("orthogonal-rank1", lambda: orthogonal(KEY, (3,)), ValueError, r"at least a 2D shape"),
    # ---- length_mask / reverse_padded / check_lengths --------------------------------------
    ("length_mask-lengths-float", lambda: seqjax.length_mask([1.5, 2.0], T, B), TypeError,
     r"lengths\.dtype=float64"),
    ("length_mask-lengths-too-long", lambda: seqjax.length_mask([1, 7], T, B), ValueError,
     r"lengths\[1\]=7"),
    ("length_mask-steps-negative", lambda: seqjax.length_mask(None, -1, B), ValueError,
     r"steps=-1"),
    ("reverse_padded-lengths-batch", lambda: seqjax.reverse_padded(z(T, B, D), [1, 2, 3]),
     ValueError, r"lengths\.shape=\(3,\) must be \(2,\)"),
    ("reverse_padded-x-rank1", lambda: seqjax.reverse_padded(z(T), [1]), ValueError,
     r"x\.shape=\(5,\) must be time-major"),
    ("check_lengths-too-long", lambda: recurrent.check_lengths(np.array([1, 9]), 2, 4),
     ValueError, r"seq_lengths\[1\]=9"),
    # ---- layers ----------------------------------------------------------------------------
    ("bidirectional-seq_lengths-list-too-long",
     lambda: seqjax.bidirectional(*bidi(), xs(), seq_lengths=[9, 2]), ValueError,
     r"seq_lengths\[0\]=9"),
    ("bidirectional-initial_carry-not-pair",
     lambda: seqjax.bidirectional(*bidi(), xs(), initial_carry=(z(B, H),) * 3), ValueError,
     r"initial_carry must be a pair"),
    ("bidirectional-params-keys", lambda: seqjax.bidirectional(bidi()[0], lstm()[1], xs()),
     ValueError, r"keys \['bw', 'fw'\]"),
    ("bidirectional-xs-features", lambda: seqjax.bidirectional(*bidi(), xs((B, T, 8))),
     ValueError, r"feature size 8"),
    ("stacked-seq_lengths-float", lambda: seqjax.stacked(*stack2(), xs(), seq_lengths=[1.0, 2.0]),
     TypeError, r"seq_lengths\.dtype=float64"),
    ("stacked-cells-not-list", lambda: seqjax.stacked(stack2()[0][0], stack2()[1], xs()),
     TypeError, r"cells must be a list"),
    ("stacked-params-count", lambda: seqjax.stacked(stack2()[0], stack2()[1][:1], xs()),
     ValueError, r"len\(cells\)=2 != len\(params\)=1"),
    ("stacked-layer1-params-shape",
     lambda: seqjax.stacked(stack2()[0], [stack2()[1][0], dict(stack2()[1][1], w_h=z(H, 4))],
                            xs()), ValueError,
     r"params\[1\]\['w_h'\]\.shape=\(4, 4\) must be \(4, 12\)"),
    ("stacked-dropout", lambda: seqjax.stacked(*stack2(), xs(), dropout=1.5), ValueError,
     r"dropout=1\.5"),
    ("stacked-initial_carries-count",
     lambda: seqjax.stacked(*stack2(), xs(), initial_carries=[z(B, H)]), ValueError,
     r"len\(initial_carries\)=1"),
    ("stacked-bidirectional-params", lambda: seqjax.stacked(*stack2(), xs(), bidirectional=True),
     ValueError, r"params\[0\] of a bidirectional stack"),
    ("pyramid-seq_lengths-too-long", lambda: seqjax.pyramid(*pyr(), xs(), seq_lengths=[3, 7]),
     ValueError, r"seq_lengths must lie in \[0, T=5\], got seq_lengths\[1\]=7"),
    ("pyramid-cell-input-size", lambda: seqjax.pyramid(*bidi(), xs()), ValueError,
     r"cell\.input_size=3 must be factor \* D = 2 \* 3 = 6"),
    ("reduce_time-factor", lambda: seqjax.reduce_time(xs(), factor=0), ValueError, r"factor=0"),
    ("reduce_time-xs-rank", lambda: seqjax.reduce_time(z(B, T)), ValueError,
     r"xs\.shape=\(2, 5\) must be \[B, T, D\]"),
    ("reduce_time-seq_lengths-float", lambda: seqjax.reduce_time(xs(), [1.0, 2.0]), TypeError,
     r"seq_lengths\.dtype=float64"),
    ("init_stack-key", lambda: seqjax.init_stack(stack2()[0], 3), TypeError,
     r"key must be one PRNG key"),
    ("stack_cells-num_layers", lambda: seqjax.stack_cells("lstm", D, H, 0), ValueError,
     r"num_layers=0"),
    # ---- tcn -------------------------------------------------------------------------------
    ("TCN.apply-conv1-bias-shape",
     lambda: tcn()[0].apply(tcn_with((0, "conv1", "b"), z(3)), xs()), ValueError,
     r"params\['blocks'\]\[0\]\['conv1'\]\['b'\]\.shape=\(3,\) must be \(4,\)"),
    ("TCN.apply-conv2-g-shape",
     lambda: tcn()[0].apply(tcn_with((1, "conv2", "g"), z(1)), xs()), ValueError,
     r"params\['blocks'\]\[1\]\['conv2'\]\['g'\]\.shape=\(1,\) must be \(4,\)"),
    ("TCN.apply-downsample-w-shape",
     lambda: tcn()[0].apply(tcn_with((0, "downsample", "w"), z(4, 4)), xs()), ValueError,
     r"params\['blocks'\]\[0\]\['downsample'\]\['w'\]\.shape=\(4, 4\) must be \(3, 4\)"),
    ("TCN.apply-missing-conv2", lambda: tcn()[0].apply(tcn_with((0, "conv2", None), 0), xs()),
     ValueError, r"params\['blocks'\]\[0\] .*lack \['conv2'\]"),
    ("TCN.apply-xs-int", lambda: tcn()[0].apply(tcn()[1], xs(dtype=jnp.int32)), TypeError,
     r"xs\.dtype=int32"),
    ("TCN.apply-seq_lengths-too-long", lambda: tcn()[0].apply(tcn()[1], xs(), seq_lengths=[6, 1]),
     ValueError, r"seq_lengths\[0\]=6"),
    ("TCN.apply-dropout-key", lambda: tcn()[0].apply(tcn()[1], xs(), train=True, key=7),
     TypeError, r"key must be one PRNG key"),
    ("TCN.init-key", lambda: tcn()[0].init("seed"), TypeError, r"key must be one PRNG key"),
    ("TCN-channels", lambda: tcn_lib.TCN(D, (4, -1)), ValueError, r"channels\[1\]=-1"),
    ("causal_conv1d-w-channels", lambda: tcn_lib.causal_conv1d(xs(), z(2, 4, 4), z(4)),
     ValueError, r"w\.shape=\(2, 4, 4\) must be \[K, C_in=3, C_out\]"),
    ("causal_conv1d-b-shape", lambda: tcn_lib.causal_conv1d(xs(), z(2, 3, 4), z(5)), ValueError,
     r"b\.shape=\(5,\) must be \(4,\)"),
    ("causal_conv1d-x-rank", lambda: tcn_lib.causal_conv1d(z(T, D), z(2, 3, 4), z(4)),
     ValueError, r"x\.shape=\(5, 3\) must be \[B, T, C_in\]"),
    ("weight_norm-g-shape", lambda: tcn_lib.weight_norm(z(2, 3, 4), z(3)), ValueError,
     r"g\.shape=\(3,\) must be \(4,\)"),
    ("receptive_field-levels", lambda: tcn_lib.receptive_field(2, 0), ValueError, r"levels=0"),
    # ---- attention -------------------------------------------------------------------------
    ("Attention.apply-w_q-shape",
     lambda: bahdanau()[0].apply(dict(bahdanau()[1], w_q=z(3, 5)), QUERY, KEYS), ValueError,
     r"params\['w_q'\]\.shape=\(3, 5\) must be \(4, 5\)"),
    ("Attention.apply-v-shape",
     lambda: bahdanau()[0].apply(dict(bahdanau()[1], v=z(1)), QUERY, KEYS), ValueError,
     r"params\['v'\]\.shape=\(1,\) must be \(5,\)"),
    ("Attention.apply-general-w-transposed",
     lambda: general()[0].apply({"w": z(6, 4)}, QUERY, KEYS), ValueError,
     r"params\['w'\]\.shape=\(6, 4\) must be \(4, 6\)"),
    ("Attention.apply-mask-shape", lambda: bahdanau()[0].apply(bahdanau()[1], QUERY, KEYS,
                                                               MASK[:, :4]), ValueError,
     r"mask\.shape=\(2, 4\) must be \(2, 5\)"),
    ("Attention.apply-mask-float", lambda: bahdanau()[0].apply(
        bahdanau()[1], QUERY, KEYS, np.where(MASK, 0.0, -np.inf).astype(np.float32)),
     TypeError, r"mask\.dtype=float32 must be bool"),
    ("Attention.apply-query-width", lambda: bahdanau()[0].apply(bahdanau()[1], z(B, 6), KEYS),
     ValueError, r"query\.shape=\(2, 6\) must be \[B, 4\]"),
    ("Attention.apply-keys-batch", lambda: bahdanau()[0].apply(bahdanau()[1], QUERY,
                                                               z(3, T, 6)), ValueError,
     r"keys\.shape=\(3, 5, 6\) must be \[2, S, 6\]"),
    ("Attention.attend-pre-width", lambda: bahdanau()[0].attend(bahdanau()[1], QUERY, KEYS,
                                                                z(B, T, 4), MASK), ValueError,
     r"pre\.shape=\(2, 5, 4\) must be \[2, 5, 5\]"),
    ("Attention.precompute-keys-width", lambda: bahdanau()[0].precompute(bahdanau()[1],
                                                                         z(B, T, 4)),
     ValueError, r"keys\.shape=\(2, 5, 4\) must be \[B, S, 6\]"),
    ("Attention.scores-query-rank", lambda: general()[0].scores(general()[1], z(4), z(B, T, 4)),
     ValueError, r"query\.shape=\(4,\) must be \[B, 4\]"),
    ("Attention.init-key", lambda: bahdanau()[0].init(None), TypeError,
     r"key must be one PRNG key"),
    ("Attention-kind", lambda: att_lib.Attention("cosine", 4, 6), ValueError,
     r"Attention\.kind='cosine'"),
    ("attention-keys-rank", lambda: att_lib.attention("dot", {}, QUERY, z(B, 4)), ValueError,
     r"keys\.shape=\(2, 4\)"),
    ("attention-mask-shape", lambda: att_lib.attention("dot", {}, QUERY, z(B, T, 4),
                                                       MASK.T), ValueError,
     r"mask\.shape=\(5, 2\) must be \(2, 5\)"),
    ("masked_softmax-mask-shape", lambda: att_lib.masked_softmax(z(B, T), MASK[:, :3]),
     ValueError, r"mask\.shape=\(2, 3\) must broadcast to scores\.shape=\(2, 5\)"),
    ("masked_softmax-scores-int", lambda: att_lib.masked_softmax(np.ones((B, T), np.int32),
                                                                 MASK), TypeError,
     r"scores\.dtype=int32"),
    # ---- seq2seq ---------------------------------------------------------------------------
    ("Seq2Seq.apply-src_lengths-list-too-long",
     lambda: seq2seq()[0].apply(seq2seq()[1], SRC, [4, 9], TGT), ValueError,
     r"src_lengths must lie in \[0, 4\], got src_lengths\[1\]=9"),
    ("Seq2Seq.apply-src_lengths-float",
     lambda: seq2seq()[0].apply(seq2seq()[1], SRC, [4.0, 2.0], TGT), TypeError,
     r"src_lengths\.dtype=float64"),
    ("Seq2Seq.apply-params-decoder-w_h",
     lambda: seq2seq()[0].apply(dict(seq2seq()[1], decoder=dict(seq2seq()[1]["decoder"],
                                                                 w_h=z(5, 5))),
                                SRC, [4, 2], TGT), ValueError,
     r"params\['decoder'\]\['w_h'\]\.shape=\(5, 5\) must be \(5, 15\)"),
    ("Seq2Seq.apply-params-missing-readout",
     lambda: seq2seq()[0].apply({k: v for k, v in seq2seq()[1].items() if k != "readout"},
                                SRC, [4, 2], TGT), ValueError, r"lack \['readout'\]"),
    ("Seq2Seq.encode-src-float", lambda: seq2seq()[0].encode(seq2seq()[1], SRC * 1.0, [4, 2]),
     TypeError, r"src\.dtype=float64"),
    ("Seq2Seq.greedy-max_len", lambda: seq2seq()[0].greedy(seq2seq()[1], SRC, [4, 2], 0),
     ValueError, r"max_len=0"),
    ("Seq2Seq.beam_search-beam_size",
     lambda: seq2seq()[0].beam_search(seq2seq()[1], SRC, [4, 2], 3, beam_size=0), ValueError,
     r"beam_size=0"),
    ("Seq2Seq.loss-tgt_lengths-too-long",
     lambda: seq2seq()[0].loss(seq2seq()[1], SRC, [4, 2], TGT, [3, 4]), ValueError,
     r"tgt_lengths\[1\]=4"),
    ("Seq2Seq.decode_step-y_prev-shape",
     lambda: seq2seq()[0].decode_step(seq2seq()[1], s2s_memory(), (z(B, 5), z(B, 5)),
                                      np.zeros((3,), np.int32)), ValueError,
     r"y_prev\.shape=\(3,\) must be \(2,\)"),
    ("Seq2Seq.decode_step-state",
     lambda: seq2seq()[0].decode_step(seq2seq()[1], s2s_memory(), (z(B, 5), z(B, 3)),
                                      np.zeros((2,), np.int32)), ValueError,
     r"state\[1\]\.shape=\(2, 3\) must be \(2, 5\)"),
    ("Seq2Seq.decoder_inputs-tgt-rank", lambda: seq2seq()[0].decoder_inputs(TGT[0]), ValueError,
     r"tgt\.shape=\(3,\) must be \[B, T\]"),
    ("Seq2Seq.initial_state-memory", lambda: seq2seq()[0].initial_state(KEYS), TypeError,
     r"memory must be a seq2seq Memory"),
    ("Seq2Seq.init-key", lambda: seq2seq()[0].init(1), TypeError, r"key must be one PRNG key"),
    ("sequence_log_probs-model", lambda: s2s.sequence_log_probs("model", {}, SRC, [4, 2], TGT,
                                                                [3, 2]), TypeError,
     r"model must be a Seq2Seq"),
    # ---- interop ---------------------------------------------------------------------------
    ("from_torch-gru-weights-as-lstm", lambda: interop.from_torch(lstm_state_dict(gates=3),
                                                                  "lstm"), ValueError,
     r"weight_hh_l0\.shape=\(12, 4\) must be \(16, 4\) for kind='lstm'"),
    ("from_torch-lstm-weights-as-gru", lambda: interop.from_torch(lstm_state_dict(), "gru"),
     ValueError, r"weight_hh_l0\.shape=\(16, 4\) must be \(12, 4\) for kind='gru'"),
    ("from_torch-bias-shape",
     lambda: interop.from_torch(dict(lstm_state_dict(), bias_ih_l0=np.zeros(15)), "lstm"),
     ValueError, r"bias_ih_l0\.shape=\(15,\) must be \(16,\)"),
    ("from_torch-layer1-inputs",
     lambda: interop.from_torch(dict(lstm_state_dict(layers=2, bidi=True),
                                     weight_ih_l1_reverse=np.zeros((16, 4))), "lstm"),
     ValueError, r"weight_ih_l1_reverse\.shape=\(16, 4\) must be \(16, 8\)"),
    ("from_torch-missing-weight_hh",
     lambda: interop.from_torch({k: v for k, v in lstm_state_dict().items()
                                 if k != "weight_hh_l0"}, "lstm"), ValueError,
     r"lacks weight_hh_l0"),
    ("from_torch-unexpected-key", lambda: interop.from_torch({"weight_hr_l0": np.zeros((4, 4))},
                                                             "lstm"), ValueError,
     r"unexpected key 'weight_hr_l0'"),
    ("from_torch-not-mapping", lambda: interop.from_torch([np.zeros(3)], "lstm"), TypeError,
     r"state_dict must be a mapping"),
    ("from_torch-int-weights",
     lambda: interop.from_torch(dict(lstm_state_dict(), weight_hh_l0=np.zeros((16, 4), int)),
                                "lstm"), TypeError, r"weight_hh_l0\.dtype=int64"),
    ("to_torch-lstm-params-as-rnn", lambda: interop.to_torch([lstm()[1]], "rnn"), ValueError,
     r"params\[0\]\['w_h'\]\.shape=\(4, 16\) must be \(4, 4\) for kind='rnn'"),
    ("to_torch-gru-params-as-lstm", lambda: interop.to_torch([gru()[1]], "lstm"), ValueError,
     r"params\[0\] lacks \['b'\]"),
    ("to_torch-bias-shape", lambda: interop.to_torch([dict(lstm()[1], b=z(4))], "lstm"),
     ValueError, r"params\[0\]\['b'\]\.shape=\(4,\) must be \(16,\)"),
    ("to_torch-not-list", lambda: interop.to_torch(lstm()[1], "lstm"), TypeError,
     r"params must be a non-empty list"),
    ("to_torch-kind", lambda: interop.to_torch([lstm()[1]], "lstmx"), ValueError,
     r"kind='lstmx'"),
    # ---- memory cells ----------------------------------------------------------------------
    ("NTM-rnn-xs-rank", lambda: _rnn(ntm, x=xs((B, D))), ValueError, r"xs\.shape=\(2, 3\)"),
    ("NTM-rnn-xs-features", lambda: _rnn(ntm, x=xs((B, T, 4))), ValueError,
     r"feature size 4 != cell\.input_size=3"),
    ("NTM.step-carry-memory", lambda: ntm()[0].step(
        ntm()[1], carry_of(ntm()[0], B)._replace(memory=z(B, 4, 3)), z(B, 24)), ValueError,
     r"carry shapes"),
    ("NTM.__call__-x_t-width", lambda: ntm()[0](ntm()[1], carry_of(ntm()[0], B), z(B, 5)),
     ValueError, r"x_t\.shape=\(2, 5\) must be \[B, 3\]"),
    ("NTM.project-xs-width", lambda: ntm()[0].project(ntm()[1], z(B, T, 4)), ValueError,
     r"xs\.shape=\(2, 5, 4\) must be \[\.\.\., 3\]"),
    ("DNC.check_params-interface-w",
     lambda: dnc_cell()[0].check_params(dict(dnc_cell()[1], interface={"w": z(6, 7),
                                                                       "b": z(7)})),
     ValueError, r"params\['interface'\]\['w'\]\.shape=\(6, 7\)"),
    ("MemoryCell-rnn-controller-w_h",
     lambda: _rnn(dnc_cell, params=dict(dnc_cell()[1], controller=dict(
         dnc_cell()[1]["controller"], w_h=z(6, 6)))), ValueError,
     r"params\['controller'\]\['w_h'\]\.shape=\(6, 6\) must be \(6, 24\)"),
    ("NTM.split_interface-xi-width", lambda: ntm()[0].split_interface(z(B, 7)), ValueError,
     r"xi\.shape=\(2, 7\) must be \[B, 24\]"),
    ("DNC.split_interface-xi-rank", lambda: dnc_cell()[0].split_interface(z(30)), ValueError,
     r"xi\.shape=\(30,\) must be \[B, 28\]"),
    ("DNC.initial_carry-batch", lambda: dnc_cell()[0].initial_carry(-2), ValueError,
     r"batch=-2"),
    ("DNC.init-key", lambda: dnc_cell()[0].init(0), TypeError, r"key must be one PRNG key"),
    ("run_with_states-xs-features", lambda: run_with_states(*ntm(), xs((B, T, 4))), ValueError,
     r"xs\.shape=\(2, 5, 4\) must be \[B, T, 3\]"),
    ("run_with_states-xs-int", lambda: run_with_states(*ntm(), xs(dtype=jnp.int32)), TypeError,
     r"xs\.dtype=int32"),
    ("run_with_states-initial_carry",
     lambda: run_with_states(*ntm(), xs(), initial_carry=carry_of(ntm()[0], 3)), ValueError,
     r"initial_carry shapes"),
    ("MemoryModel.apply-readout-shape",
     lambda: memory_model()[0].apply(dict(memory_model()[1], readout={"w": z(8, 2), "b": z(2)}),
                                     xs()), ValueError,
     r"params\['readout'\]\['w'\]\.shape=\(8, 2\) must be \(9, 2\)"),
    ("MemoryModel.apply-lengths-too-long", lambda: memory_model()[0].apply(memory_model()[1],
                                                                           xs(), [6, 1]),
     ValueError, r"seq_lengths\[0\]=6"),
    ("MemoryModel.trace-xs-rank", lambda: memory_model()[0].trace(memory_model()[1], z(T, D)),
     ValueError, r"xs\.shape=\(5, 3\)"),
    ("MemoryModel-output_size", lambda: MemoryModel(ntm()[0], 0), ValueError, r"output_size"),
    ("usage_update-read_weights-N", lambda: dnc.usage_update(z(B, 5), z(B, 5), z(B, 2),
                                                             z(B, 2, 4)), ValueError,
     r"read_weights\.shape=\(2, 2, 4\) must be \[B=2, R=2, N=5\]"),
    ("allocation_weighting-int", lambda: dnc.allocation_weighting(np.zeros((B, 5), np.int32)),
     TypeError, r"usage\.dtype=int32"),
    ("allocation_weighting-eps", lambda: dnc.allocation_weighting(z(B, 5), eps=1.5), ValueError,
     r"eps=1\.5"),
    ("allocation_weighting-method", lambda: dnc.allocation_weighting(z(B, 5), method="heap"),
     ValueError, r"method='heap'"),
    ("write_weighting-gate-rank", lambda: dnc.write_weighting(z(B, 5), z(B, 5), z(B, 1), z(B)),
     ValueError, r"allocation_gate\.shape=\(2, 1\) must be \[B=2\]"),
    ("link_update-link-not-square", lambda: dnc.link_update(z(B, 5, 4), z(B, 5), z(B, 5)),
     ValueError, r"link\.shape=\(2, 5, 4\) must be \[B=2, N=5, N=5\]"),
    ("precedence_update-N", lambda: dnc.precedence_update(z(B, 5), z(B, 6)), ValueError,
     r"write_weights\.shape=\(2, 6\) must be \[B=2, N=5\]"),
    ("directional_weightings-read_weights-rank",
     lambda: dnc.directional_weightings(z(B, 5, 5), z(B, 5)), ValueError,
     r"read_weights\.shape=\(2, 5\) must be \[B=2, R, N=5\]"),
    ("read_weighting-modes", lambda: dnc.read_weighting(z(B, 2, 2), z(B, 2, 5), z(B, 2, 5),
                                                        z(B, 2, 5)), ValueError,
     r"modes\.shape=\(2, 2, 2\) must be \[B=2, R=2, 3\]"),
    ("cosine_similarity-keys-W", lambda: addressing.cosine_similarity(z(B, 5, 3), z(B, 1, 4)),
     ValueError, r"keys\.shape=\(2, 1, 4\) must be \[B=2, K=1, W=3\]"),
    ("content_weighting-strengths", lambda: addressing.content_weighting(z(B, 5, 3), z(B, 2, 3),
                                                                         z(B)), ValueError,
     r"strengths\.shape=\(2,\) must be \[B=2, K=2\]"),
    ("interpolate-gate", lambda: addressing.interpolate(z(B, 2, 5), z(B, 2, 5), z(B, 2, 1)),
     ValueError, r"gate\.shape=\(2, 2, 1\) must be \[B=2, K=2\]"),
    ("circular_shift-even", lambda: addressing.circular_shift(z(B, 1, 5), z(B, 1, 2)),
     ValueError, r"shift\.shape\[-1\]=2 must be odd"),
    ("circular_shift-heads", lambda: addressing.circular_shift(z(B, 1, 5), z(B, 2, 3)),
     ValueError, r"shift\.shape=\(2, 2, 3\) must be \[B=2, K=1, S\]"),
    ("sharpen-gamma", lambda: addressing.sharpen(z(B, 1, 5), z(B, 2)), ValueError,
     r"gamma\.shape=\(2, 2\) must be \[B=2, K=1\]"),
    ("ntm_address-shifts", lambda: addressing.ntm_address(z(B, 5, 3), z(B, 1, 5), z(B, 1, 3),
                                                          z(B, 1), z(B, 1), z(B, 3), z(B, 1)),
     ValueError, r"shifts\.shape=\(2, 3\) must be \[B=2, K=1, S\]"),
    ("read-weights-N", lambda: addressing.read(z(B, 5, 3), z(B, 1, 4)), ValueError,
     r"weights\.shape=\(2, 1, 4\) must be \[B=2, K=1, N=5\]"),
    ("erase_and_add-erase-W", lambda: addressing.erase_and_add(z(B, 5, 3), z(B, 1, 5),
                                                               z(B, 1, 4), z(B, 1, 3)),
     ValueError, r"erase\.shape=\(2, 1, 4\) must be \[B=2, K=1, W=3\]"),
    # ---- nn modules ------------------------------------------------------------------------
    ("nn.LSTM-__call__-seq_lengths-float",
     lambda: nn_modules()["lstm"](xs(), seq_lengths=[1.0, 2.0]), TypeError,
     r"seq_lengths\.dtype=float64"),
    ("nn.GRU-__call__-xs-features", lambda: nn_modules()["gru"](xs((B, T, 5))), ValueError,
     r"feature size 5"),
    ("nn.RNN-__call__-seq_lengths-too-long",
     lambda: nn_modules()["rnn"](xs(), seq_lengths=np.array([2, 8])), ValueError,
     r"seq_lengths\[1\]=8"),
    ("nn.Recurrent-kind", lambda: sjnn.Recurrent("lstmx", D, H, rngs=nnx.Rngs(0)), ValueError,
     r"unknown cell kind 'lstmx'"),
    ("nn.TCN-__call__-xs-rank", lambda: nn_modules()["tcn"](z(T, D)), ValueError,
     r"xs\.shape=\(5, 3\)"),
    ("nn.TCN-__call__-seq_lengths", lambda: nn_modules()["tcn"](xs(), seq_lengths=[1, 2, 3]),
     ValueError, r"seq_lengths\.shape=\(3,\) must be \(2,\)"),
    ("nn.NTM-__call__-xs-features", lambda: nn_modules()["ntm"](xs((B, T, 2))), ValueError,
     r"feature size 2"),
    ("nn.DNC-__call__-seq_lengths-float",
     lambda: nn_modules()["dnc"](xs(), seq_lengths=np.array([1.0, 2.0])), TypeError,
     r"seq_lengths\.dtype=float64"),
    ("nn.Memory-__call__-initial_carry",
     lambda: nn_modules()["ntm"](xs(), initial_carry=carry_of(dnc_cell()[0], B)),
     ValueError, r"initial_carry shapes"),
    ("nn.Memory-cell-not-a-cell", lambda: sjnn.Memory("ntm", rngs=nnx.Rngs(0)), TypeError,
     r"cell must be a seqjax cell"),
    ("nn.Seq2Seq-__call__-src_lengths-too-long",
     lambda: nn_modules()["s2s"](SRC, [5, 2], TGT), ValueError, r"src_lengths\[0\]=5"),
]


@pytest.mark.parametrize("thunk,exc,match", [pytest.param(f, e, m, id=i)
                                             for i, f, e, m in CASES])
def test_bad_input_raises_naming_the_argument(thunk, exc, match):
    with pytest.raises(exc, match=match):
        thunk()


def test_the_sweep_is_large_and_ids_are_unique():
    ids = [c[0] for c in CASES]
    assert len(ids) >= 60 and len(set(ids)) == len(ids)


# --------------------------------------------------------------------------------------------
# Array-likes of lengths are accepted: a list gives what the array gives; jit checks statically
# --------------------------------------------------------------------------------------------


def test_list_lengths_equal_array_lengths_and_jit_checks_only_statically():
    cell = SimpleRNN(D, H)
    params = fake_params(cell.init, 0.5)
    x = np.random.default_rng(0).standard_normal((B, T, D)).astype(np.float32)
    f = jax.jit(lambda lens: seqjax.rnn(cell, params, x, seq_lengths=lens, backend="scan"))
    ys_a, c_a = f(jnp.array([3, 5], jnp.int32))
    ys_l, c_l = seqjax.rnn(cell, params, x, seq_lengths=[3, 5], backend="scan")
    np.testing.assert_allclose(ys_l, ys_a, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(c_l, c_a, rtol=1e-6, atol=1e-7)
    # under jit the values are unknown: out of range acts as clipped (documented); shapes and
    # dtypes are still checked
    ys_j, c_j = f(jnp.array([9, 2], jnp.int32))
    ys_c, c_c = f(jnp.array([5, 2], jnp.int32))
    np.testing.assert_array_equal(ys_j, ys_c)
    np.testing.assert_array_equal(c_j, c_c)
    with pytest.raises(ValueError, match=r"seq_lengths\.shape=\(3,\)"):
        f(jnp.array([1, 2, 3], jnp.int32))


# --------------------------------------------------------------------------------------------
# Padding never changes a value or a gradient (NaN and inf in the padding)
# --------------------------------------------------------------------------------------------

LENGTHS = np.array([5, 2, 0, 3], np.int32)


def _padded_pair(shape=(4, T, D), lengths=LENGTHS):
    """The same batch twice: zeros in the padding, then NaN and inf (alternating) there."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    valid = (np.arange(shape[1])[None, :] < lengths[:, None])[..., None]
    bad = np.where(np.arange(shape[0])[:, None, None] % 2 == 0, np.nan, np.inf)
    bad = np.broadcast_to(bad, shape).astype(np.float32)
    return np.where(valid, x, 0.0).astype(np.float32), np.where(valid, x, bad)


def _assert_same(tree_a, tree_b):
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
        assert np.all(np.isfinite(np.asarray(a))), "non-finite value or gradient"
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _check_padding_is_inert(fn, params, clean, dirty):
    """``fn(params, x)`` and the gradients of a fixed weighted sum of its outputs w.r.t.
    ``params`` and ``x`` (one compilation) are the same with NaN/inf or zeros in the padding;
    the gradient w.r.t. the padding itself is 0."""
    def loss(p, x):
        out = fn(p, x)
        return sum(jnp.sum(jnp.sin(jnp.arange(leaf.size, dtype=jnp.float32).reshape(leaf.shape))
                           * leaf) for leaf in jax.tree.leaves(out))

    run = jax.jit(lambda p, x: (fn(p, x), jax.grad(loss, argnums=(0, 1))(p, x)))
    _assert_same(run(params, clean), run(params, dirty))


@pytest.mark.parametrize("cell_fn,kw", [
    pytest.param(lambda: LSTM(D, H), dict(backend="scan"), id="lstm-scan-hand-vjp"),
    pytest.param(lambda: GRU(D, H), dict(backend="scan", reverse=True), id="gru-scan-reverse"),
    pytest.param(lambda: LSTM(D, H), dict(backend="pallas"), id="lstm-pallas-kernel"),
    pytest.param(lambda: PeepholeLSTM(D, H), dict(backend="scan", remat=True),
                 id="peephole-autodiff-remat"),
    pytest.param(lambda: NTM(D, controller_size=3, memory_size=3, word_size=2),
                 dict(backend="scan"), id="ntm-autodiff-no-hand-vjp"),
])
def test_rnn_padding_changes_neither_values_nor_gradients(cell_fn, kw):
    cell = cell_fn()
    params = fake_params(cell.init, 0.5)
    clean, dirty = _padded_pair()
    _check_padding_is_inert(lambda p, x: seqjax.rnn(cell, p, x, seq_lengths=LENGTHS, **kw),
                            params, clean, dirty)


def test_stacked_and_pyramid_padding_is_inert():
    cells = seqjax.stack_cells("gru", D, H, 2)
    pyr_cell = GRU(2 * H, H)
    params = {"stack": fake_params(lambda k: seqjax.init_stack(cells, k), 0.5),
              "pyr": fake_params(lambda k: {"fw": pyr_cell.init(k), "bw": pyr_cell.init(k)},
                                 0.5, seed=1)}
    lengths = [5, 2, 0, 3]

    def fn(p, x):
        ys, _ = seqjax.stacked(cells, p["stack"], x, seq_lengths=lengths)
        ys2, _, _ = seqjax.pyramid(pyr_cell, p["pyr"], ys, seq_lengths=lengths)
        return ys, ys2

    _check_padding_is_inert(fn, params, *_padded_pair())


def test_tcn_padding_is_inert_with_seq_lengths():
    cfg = tcn_lib.TCN(D, (4, 5), kernel_size=2)
    params = fake_params(cfg.init, 0.5)
    clean, dirty = _padded_pair()
    _check_padding_is_inert(lambda p, x: cfg.apply(p, x, seq_lengths=LENGTHS), params, clean,
                            dirty)
    # before the lengths the outputs are the TCN's without lengths (it is causal), 0 after
    out, plain = cfg.apply(params, clean, seq_lengths=LENGTHS), cfg.apply(params, clean)
    valid = (np.arange(T)[None, :] < LENGTHS[:, None])[..., None]
    np.testing.assert_allclose(out, np.where(valid, plain, 0.0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", ["bahdanau", "general", "dot"])
def test_attention_masked_nan_keys_change_nothing(kind):
    key_size = 4 if kind == "dot" else 6
    att = att_lib.Attention(kind, 4, key_size, attn_size=3)
    lengths = np.array([5, 3, 1, 2], np.int32)
    clean, dirty = _padded_pair(shape=(4, T, key_size), lengths=lengths)
    mask = np.arange(T)[None, :] < lengths[:, None]
    query = np.random.default_rng(2).standard_normal((4, 4)).astype(np.float32)
    params = {"att": fake_params(att.init, 0.5), "query": query}

    def fn(p, k):  # apply, and attend over keys precomputed with the mask
        pre = att.precompute(p["att"], k, mask)
        return att.apply(p["att"], p["query"], k, mask), att.attend(p["att"], p["query"], k,
                                                                   pre, mask)

    _check_padding_is_inert(fn, params, clean, dirty)


# --------------------------------------------------------------------------------------------
# DNC allocation: pairwise == sort where usage is exactly 0
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps", [0.0, dnc.EPS_ALLOC])
def test_allocation_pairwise_equals_sort_at_zero_usage(eps):
    u = np.array([[0.0, 0.5, 0.2, 0.0, 0.9],     # two zeros
                  [0.3, 0.0, 0.7, 0.2, 0.1],     # one zero
                  [0.0, 0.0, 0.0, 0.0, 0.0],     # all free
                  [0.3, 0.4, 0.7, 0.2, 0.1]],    # none
                 np.float32)
    weights = np.arange(1.0, 6.0, dtype=np.float32)

    @jax.jit
    def both(u):
        out = {}
        for method in ("sort", "pairwise"):
            def total(u, m=method):
                return jnp.sum(dnc.allocation_weighting(u, eps, method=m) * weights)

            out[method] = (dnc.allocation_weighting(u, eps, method=method), jax.grad(total)(u))
        return out

    out = both(u)
    for a, g in out.values():
        assert np.all(np.isfinite(np.asarray(a))) and np.all(np.isfinite(np.asarray(g)))
    np.testing.assert_allclose(out["pairwise"][0], out["sort"][0], atol=1e-6)
    np.testing.assert_allclose(out["pairwise"][1], out["sort"][1], rtol=1e-5, atol=1e-5)
    if eps == 0.0:  # a row of usage exactly 0 gets everything: the first free one
        np.testing.assert_allclose(out["pairwise"][0][0], [1, 0, 0, 0, 0], atol=1e-7)
        np.testing.assert_allclose(out["pairwise"][0][2], [1, 0, 0, 0, 0], atol=1e-7)
