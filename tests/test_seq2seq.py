"""Attention, encoder-decoder, greedy and beam search, translation data (seqjax.models.seq2seq)."""

from __future__ import annotations

import datetime
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.core.attention import Attention, attention, masked_softmax
from seqjax.data.translation import (
    ParallelData,
    Vocab,
    date_examples,
    load_tsv,
    make_translation_data,
    number_pairs,
    pad_batch,
    split_pairs,
)
from seqjax.models.seq2seq import Seq2Seq, sequence_log_probs

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# Attention against numpy


def _np_attention(kind, p, q, k, mask):
    p = {n: np.asarray(v, np.float64) for n, v in p.items()}
    q, k = np.asarray(q, np.float64), np.asarray(k, np.float64)
    b, s, _ = k.shape
    scores = np.zeros((b, s))
    for i in range(b):
        for j in range(s):
            if kind == "bahdanau":
                scores[i, j] = p["v"] @ np.tanh(q[i] @ p["w_q"] + k[i, j] @ p["w_k"] + p["b"])
            elif kind == "dot":
                scores[i, j] = q[i] @ k[i, j]
            else:
                scores[i, j] = q[i] @ p["w"] @ k[i, j]
    w = np.zeros((b, s))
    for i in range(b):
        valid = np.flatnonzero(mask[i])
        if valid.size:
            e = np.exp(scores[i, valid] - scores[i, valid].max())
            w[i, valid] = e / e.sum()
    return np.einsum("bs,bsk->bk", w, k), w


@pytest.mark.parametrize("kind", ["bahdanau", "dot", "general"])
def test_attention_matches_numpy_and_masks(kind):
    b, s, q_size = 3, 5, 4
    k_size = q_size if kind == "dot" else 6
    att = Attention(kind, q_size, k_size, attn_size=7)
    p = att.init(jax.random.PRNGKey(1))
    if kind == "bahdanau":
        p["b"] = jnp.asarray(RNG.normal(size=7), jnp.float32)
    q = RNG.normal(size=(b, q_size)).astype(np.float32)
    keys = RNG.normal(size=(b, s, k_size)).astype(np.float32)
    mask = np.arange(s)[None, :] < np.array([5, 2, 0])[:, None]  # the last row: all masked
    ctx, w = att.apply(p, q, keys, mask)
    ref_ctx, ref_w = _np_attention(kind, p, q, keys, mask)
    np.testing.assert_allclose(w, ref_w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ctx, ref_ctx, rtol=1e-5, atol=1e-6)
    w = np.asarray(w)
    np.testing.assert_allclose(w[:2].sum(1), 1.0, rtol=1e-6)
    assert np.all(w[~mask] == 0.0) and np.all(w[2] == 0) and np.all(np.asarray(ctx)[2] == 0)
    np.testing.assert_allclose(ctx, np.einsum("bs,bsk->bk", w, keys), rtol=1e-5, atol=1e-6)
    # masked keys do not change anything, even huge ones
    perturbed = np.where(mask[..., None], keys, 1e4 * RNG.normal(size=keys.shape)).astype(
        np.float32)
    ctx2, w2 = att.apply(p, q, perturbed, mask)
    np.testing.assert_array_equal(np.asarray(w2), w)
    np.testing.assert_allclose(ctx2, ctx, rtol=1e-6, atol=1e-7)
    # functional shortcut gives the same, and gradients are finite with an all-masked row
    np.testing.assert_allclose(attention(kind, p, q, keys, mask, attn_size=7)[0], ctx, rtol=1e-6)
    g = jax.grad(lambda kk: jnp.sum(att.apply(p, q, kk, mask)[0] ** 2))(jnp.asarray(perturbed))
    assert np.all(np.isfinite(g)) and np.all(np.asarray(g)[2] == 0)


def test_masked_softmax_extreme_scores():
    scores = jnp.array([[1.0, jnp.inf, -jnp.inf, 2.0], [jnp.nan, 0.0, 0.0, 0.0]])
    mask = jnp.array([[True, False, False, True], [False, True, True, False]])
    w = masked_softmax(scores, mask)
    e = np.exp([1.0 - 2.0, 0.0])
    np.testing.assert_allclose(w[0], [e[0] / e.sum(), 0, 0, e[1] / e.sum()], rtol=1e-6)
    np.testing.assert_allclose(w[1], [0, 0.5, 0.5, 0])
    g = jax.grad(lambda s: jnp.sum(masked_softmax(s, mask)[:, 0] * 3.0))(scores)
    assert np.all(np.isfinite(g))


def test_attention_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        Attention("cosine", 4, 4)
    with pytest.raises(ValueError, match="query_size == key_size"):
        Attention("dot", 4, 6)
    att = Attention("general", 4, 6)
    p = att.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"query.shape=\(2, 5\)"):
        att.apply(p, jnp.zeros((2, 5)), jnp.zeros((2, 3, 6)))
    with pytest.raises(ValueError, match=r"keys.shape"):
        att.apply(p, jnp.zeros((2, 4)), jnp.zeros((2, 3, 5)))
    with pytest.raises(ValueError, match=r"mask.shape=\(2, 4\)"):
        att.apply(p, jnp.zeros((2, 4)), jnp.zeros((2, 3, 6)), jnp.ones((2, 4), bool))


# ---------------------------------------------------------------------------------------------
# The model: teacher forcing, reversal


def _batch(model, b=3, s=6, t=5, seed=0):
    r = np.random.default_rng(seed)
    src = r.integers(3, model.src_vocab, (b, s)).astype(np.int32)
    src_len = np.array([s, 3, 1][:b], np.int32)
    tgt = r.integers(3, model.tgt_vocab, (b, t)).astype(np.int32)
    tgt_len = np.array([t, 2, 4][:b], np.int32)
    for i in range(b):
        src[i, src_len[i]:] = 0
        tgt[i, tgt_len[i] - 1] = model.eos_id
        tgt[i, tgt_len[i]:] = model.pad_id
    return src, src_len, tgt, tgt_len


@pytest.mark.parametrize("attention_kind,cell,reverse", [("bahdanau", "lstm", False),
                                                         ("luong", "gru", True)])
def test_loss_equals_python_loop(attention_kind, cell, reverse):
    model = Seq2Seq(9, 11, embed_size=5, hidden_size=8, cell=cell, attention=attention_kind,
                    reverse_source=reverse, encoder_layers=2)
    params = model.init(jax.random.PRNGKey(2))
    src, src_len, tgt, tgt_len = _batch(model)
    loss, aux = jax.jit(model.loss)(params, src, src_len, tgt, tgt_len)
    memory = jax.jit(model.encode)(params, src, src_len)
    state = model.initial_state(memory)
    y_prev = np.full(3, model.bos_id, np.int32)
    nll, count, right = 0.0, 0, 0
    decode_step = jax.jit(model.decode_step)
    for t in range(tgt.shape[1]):
        state, logits, _ = decode_step(params, memory, state, jnp.asarray(y_prev))
        logits = np.asarray(logits, np.float64)
        for i in range(3):
            if t < tgt_len[i]:
                z = logits[i] - logits[i].max()
                nll -= z[tgt[i, t]] - np.log(np.exp(z).sum())
                count += 1
                right += int(np.argmax(logits[i]) == tgt[i, t])
        y_prev = tgt[:, t]
    np.testing.assert_allclose(loss, nll / count, rtol=1e-5)
    np.testing.assert_allclose(aux["token_acc"], right / count, rtol=1e-6)
    seq_logp = _seq_logp(model, params, src, src_len, tgt, tgt_len)
    np.testing.assert_allclose(-np.sum(seq_logp) / count, loss, rtol=1e-5)


def _seq_logp(model, *args):
    return jax.jit(sequence_log_probs, static_argnums=0)(model, *args)


def _reverse_rows(x, lengths):
    out = x.copy()
    for i, n in enumerate(lengths):
        out[i, :n] = x[i, :n][::-1]
    return out


def test_reverse_source_and_padding():
    kw = dict(embed_size=5, hidden_size=6, cell="lstm", bidirectional=False)
    fwd = Seq2Seq(9, 11, **kw)
    rev = Seq2Seq(9, 11, reverse_source=True, **kw)
    params = fwd.init(jax.random.PRNGKey(3))
    src, src_len, _, _ = _batch(fwd)
    m_rev = jax.jit(rev.encode)(params, src, src_len)
    m_ref = jax.jit(fwd.encode)(params, _reverse_rows(src, src_len), src_len)
    # reading the source backwards == reading a reversed source; keys come back in source order
    np.testing.assert_allclose(m_rev.keys, _reverse_rows(np.asarray(m_ref.keys), src_len),
                               rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(m_rev.init_carry), jax.tree.leaves(m_ref.init_carry)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    plain = jax.jit(fwd.encode)(params, src, src_len)
    assert not np.allclose(m_rev.init_carry[0], plain.init_carry[0])
    # a padded batch encodes each sentence as it would alone
    one = jax.jit(rev.encode)(params, src[1:2, : src_len[1]], src_len[1:2])
    np.testing.assert_allclose(m_rev.keys[1, : src_len[1]], one.keys[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(m_rev.init_carry[0][1], one.init_carry[0][0], rtol=1e-5,
                               atol=1e-6)


def test_model_bad_inputs():
    with pytest.raises(ValueError, match="attention"):
        Seq2Seq(5, 5, attention="sideways")
    with pytest.raises(ValueError, match="cell kind"):
        Seq2Seq(5, 5, cell="transformer")
    with pytest.raises(ValueError, match="eos_id"):
        Seq2Seq(5, 2)
    model = Seq2Seq(9, 11, embed_size=4, hidden_size=4)
    params = model.init(jax.random.PRNGKey(0))
    src, src_len, tgt, tgt_len = _batch(model)
    with pytest.raises(TypeError, match="src.dtype"):
        model.loss(params, src.astype(np.float32), src_len, tgt, tgt_len)
    with pytest.raises(ValueError, match=r"src_lengths.shape=\(2,\)"):
        model.greedy(params, src, src_len[:2], 5)
    with pytest.raises(ValueError, match=r"src_lengths must lie in \[0, 6\]"):
        model.greedy(params, src, src_len + 5, 5)
    with pytest.raises(ValueError, match="src holds ids outside"):
        model.greedy(params, src + 20, src_len, 5)
    with pytest.raises(ValueError, match="max_len"):
        model.greedy(params, src, src_len, 0)
    with pytest.raises(ValueError, match="beam_size"):
        model.beam_search(params, src, src_len, 5, beam_size=0)
    with pytest.raises(ValueError, match="same batch size"):
        model.apply(params, src, src_len, tgt[:2], tgt_len[:2])


# ---------------------------------------------------------------------------------------------
# Decoding


@pytest.mark.parametrize("attention_kind", ["bahdanau", "none"])
def test_beam_one_equals_greedy_and_scores_are_log_probs(attention_kind):
    model = Seq2Seq(9, 7, embed_size=6, hidden_size=8, attention=attention_kind)
    params = model.init(jax.random.PRNGKey(4))
    # sharper output distributions so that some sentences end early
    params["readout"]["w"] = params["readout"]["w"] * 4.0
    src, src_len, _, _ = _batch(model)
    src, src_len = np.concatenate([src, src[::-1]]), np.concatenate([src_len, src_len[::-1]])
    g = model.greedy(params, src, src_len, 8)
    b1 = model.beam_search(params, src, src_len, 8, beam_size=1)
    np.testing.assert_array_equal(b1.tokens[:, 0], g.tokens)
    np.testing.assert_array_equal(b1.lengths[:, 0], g.lengths)
    np.testing.assert_allclose(b1.log_probs[:, 0], g.log_probs, rtol=1e-5)
    # beam hypotheses: sorted by score, scores = teacher-forced log-probabilities
    k = 3
    for alpha in (0.0, 1.0):
        bk = model.beam_search(params, src, src_len, 8, beam_size=k, length_penalty=alpha)
        scores = np.asarray(bk.scores)
        fin = np.asarray(bk.finished)
        for i in range(len(src)):
            f = scores[i][fin[i]]
            assert np.all(np.diff(f) <= 1e-6)
        toks = np.asarray(bk.tokens).reshape(-1, 8)
        lens = np.asarray(bk.lengths).reshape(-1)
        ref = _seq_logp(model, params, np.repeat(src, k, 0), np.repeat(src_len, k, 0),
                                 toks, lens)
        np.testing.assert_allclose(np.asarray(bk.log_probs).reshape(-1), ref, rtol=1e-4,
                                   atol=1e-5)
        np.testing.assert_allclose(scores, np.asarray(bk.log_probs) / np.maximum(
            np.asarray(bk.lengths), 1) ** alpha, rtol=1e-5)
        # finished hypotheses end at <eos> and are padded after it
        for row, n, done in zip(toks, lens, fin.reshape(-1)):
            if done:
                assert row[n - 1] == model.eos_id and np.all(row[n:] == model.pad_id)
                assert model.eos_id not in row[: n - 1]


def _bigram_model(table):
    """A Seq2Seq whose next-token logits are ``table[y_prev]`` whatever the source."""
    v = table.shape[0]
    model = Seq2Seq(3, v, embed_size=v, hidden_size=v, cell="rnn", attention="none",
                    bidirectional=False)
    params = model.init(jax.random.PRNGKey(0))
    params["tgt_embed"] = jnp.eye(v)
    params["decoder"] = {"w_x": 20.0 * jnp.eye(v), "w_h": jnp.zeros((v, v)),
                         "b": jnp.zeros((v,))}  # h = tanh(20 onehot(y_prev)) = onehot
    params["readout"] = {"w": jnp.asarray(table, jnp.float32), "b": jnp.zeros((v,))}
    return model, params


def test_beam_search_beats_greedy_on_hand_built_model():
    # tokens: pad 0, bos 1, eos 2, a 3, b 4; log-probabilities of the next token per previous
    probs = np.full((5, 5), 1e-6)
    probs[1, [3, 4]] = [0.55, 0.45]  # after <bos>: a is likelier ...
    probs[3, [2, 3, 4]] = [0.30, 0.36, 0.34]  # ... but after a, everything is uncertain
    probs[4, [2, 3, 4]] = [0.98, 0.01, 0.01]  # while b is followed by <eos>
    probs[0, 2] = probs[2, 2] = 1.0
    logp = np.log(probs / probs.sum(1, keepdims=True))
    model, params = _bigram_model(logp)
    max_len = 4
    # exhaustive reference: every sequence ending in <eos> within max_len
    best, best_lp = None, -np.inf
    for n in range(1, max_len + 1):
        for body in itertools.product(range(5), repeat=n - 1):
            if 2 in body:
                continue
            seq = list(body) + [2]
            lp = sum(logp[p, t] for p, t in zip([1] + seq[:-1], seq))
            if lp > best_lp:
                best, best_lp = seq, lp
    assert best == [4, 2]
    src, src_len = np.array([[0, 1]], np.int32), np.array([2], np.int32)
    g = model.greedy(params, src, src_len, max_len)
    assert list(np.asarray(g.tokens[0])) == [3, 3, 3, 3]  # greedy keeps taking a, never ends
    beam = model.beam_search(params, src, src_len, max_len, beam_size=2)
    assert list(np.asarray(beam.tokens[0, 0])) == [4, 2, 0, 0]
    assert bool(beam.finished[0, 0]) and int(beam.lengths[0, 0]) == 2
    np.testing.assert_allclose(beam.log_probs[0, 0], best_lp, rtol=1e-5)
    # <eos> first: decoding stops at once, the rest is padding
    logp2 = logp.copy()
    logp2[1] = np.log([1e-6, 1e-6, 0.9, 0.1 - 2e-6, 1e-6])
    model2, params2 = _bigram_model(logp2)
    g2 = model2.greedy(params2, src, src_len, max_len)
    assert list(np.asarray(g2.tokens[0])) == [2, 0, 0, 0] and int(g2.lengths[0]) == 1
    b2 = model2.beam_search(params2, src, src_len, max_len, beam_size=2)
    assert list(np.asarray(b2.tokens[0, 0])) == [2, 0, 0, 0] and int(b2.lengths[0, 0]) == 1


def test_tiny_model_learns_copy():
    import optax

    r = np.random.default_rng(0)
    vocab = 13  # specials 0..3 then digits 3..12 share ids on both sides

    def batch(n, rng):
        lens = rng.integers(2, 7, n)
        src = np.zeros((n, 6), np.int32)
        tgt = np.zeros((n, 7), np.int32)
        for i, m in enumerate(lens):
            src[i, :m] = rng.integers(3, vocab, m)
            tgt[i, :m], tgt[i, m] = src[i, :m], 2
        return src, lens.astype(np.int32), tgt, (lens + 1).astype(np.int32)

    model = Seq2Seq(vocab, vocab, embed_size=16, hidden_size=32, cell="gru",
                    attention="luong")
    params = model.init(jax.random.PRNGKey(0))
    opt = optax.adam(1e-2)
    state = opt.init(params)

    @jax.jit
    def step(params, state, b):
        (loss, _), g = jax.value_and_grad(model.loss, has_aux=True)(params, *b)
        updates, state = opt.update(g, state)
        return optax.apply_updates(params, updates), state, loss

    for _ in range(300):
        params, state, loss = step(params, state, batch(64, r))
    src, src_len, tgt, tgt_len = batch(300, np.random.default_rng(123))
    out = model.greedy(params, src, src_len, 7)
    exact = np.mean([np.array_equal(o[:n], t[:n]) for o, t, n in
                     zip(np.asarray(out.tokens), tgt, tgt_len)])
    assert exact == 1.0, (exact, float(loss))
    # attention of a copy model looks at the position it copies
    w = np.asarray(out.weights)
    hits = [np.argmax(w[i, t]) == t for i in range(50) for t in range(src_len[i])]
    assert np.mean(hits) > 0.9


def test_nnx_wrapper_matches_functional():
    from flax import nnx

    from seqjax.nn.seq2seq import Seq2Seq as NNXSeq2Seq

    m = NNXSeq2Seq(9, 11, embed_size=4, hidden_size=6, rngs=nnx.Rngs(0))
    src, src_len, tgt, tgt_len = _batch(m.config)
    loss = nnx.jit(lambda m, *b: m.loss(*b)[0])(m, src, src_len, tgt, tgt_len)
    ref = jax.jit(m.config.loss)(m.params, src, src_len, tgt, tgt_len)[0]
    np.testing.assert_allclose(loss, ref, rtol=1e-6)
    np.testing.assert_array_equal(m.greedy(src, src_len, 4).tokens,
                                  m.beam_search(src, src_len, 4, beam_size=1).tokens[:, 0])
    assert len(nnx.state(m, nnx.Param)) > 0


# ---------------------------------------------------------------------------------------------
# Data


def test_number_pairs_are_num2words_and_deterministic():
    from num2words import num2words

    pairs = number_pairs(21, seed=5, max_value=20)
    assert sorted(pairs) == sorted((num2words(i, lang="en"), num2words(i, lang="fr"))
                                   for i in range(21))
    assert ("seventeen", "dix-sept") in pairs
    assert number_pairs(50, seed=1) == number_pairs(50, seed=1) != number_pairs(50, seed=2)
    with pytest.raises(ValueError, match="distinct"):
        number_pairs(30, max_value=20)


def test_dates_round_trip():
    from babel.dates import format_date, parse_date

    examples = date_examples(300, seed=3)
    assert examples == date_examples(300, seed=3)
    assert len({e.source for e in examples}) == 300
    assert len({e.locale for e in examples}) == 8
    for e in examples:
        day = datetime.date.fromisoformat(e.target)  # the ISO target parses back ...
        assert day == e.date  # ... to the date that was written
        assert format_date(day, e.pattern, locale=e.locale) == e.source
        if e.source[0].isdigit() and all(c.isdigit() or c in "./-" for c in e.source):
            assert parse_date(e.source, locale=e.locale) == day  # babel reads numeric ones back


def test_vocab_split_batches():
    pairs = [("ab c", "x y"), ("b", "y"), ("abc", "yx")] * 2 + [(f"s{i}", "t") for i in range(20)]
    v = Vocab.build([s for s, _ in pairs], "char")
    assert v.tokens[:4] == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert v.decode(v.encode("ab c")) == "ab c" and v.encode("q") == [v.unk_id]
    assert v.decode([1, *v.encode("ab"), 2, *v.encode("c")]) == "ab"
    w = Vocab.build(["le chat", "le chien"], "word")
    assert w.tokens[4] == "le" and w.decode(w.encode("le chien")) == "le chien"
    with pytest.raises(ValueError, match="must start with"):
        Vocab(("a", "b"))
    splits = split_pairs(pairs, (0.2, 0.2), seed=1)
    assert splits == split_pairs(pairs, (0.2, 0.2), seed=1)
    srcs = [{s for s, _ in splits[k]} for k in ("train", "valid", "test")]
    assert not (srcs[0] & srcs[1]) and not (srcs[0] & srcs[2]) and not (srcs[1] & srcs[2])
    assert sum(len(x) for x in splits.values()) == len(pairs)
    ids, lens = pad_batch([[5, 6], [7]], pad_id=0)
    np.testing.assert_array_equal(ids, [[5, 6], [7, 0]])
    np.testing.assert_array_equal(lens, [2, 1])
    data = ParallelData.from_pairs("toy", pairs, seed=0)
    src, sl, tgt, tl = data.train_batch(3, 4, seed=0)
    assert src.shape == (4, data.max_src_len) and tgt.shape == (4, data.max_tgt_len)
    for a, b in zip(data.train_batch(3, 4), (src, sl, tgt, tl)):
        np.testing.assert_array_equal(a, b)
    for i in range(4):  # targets end with <eos>; lengths count it
        assert tgt[i, tl[i] - 1] == 2 and np.all(tgt[i, tl[i]:] == 0)


def test_tsv_loader(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_text("1\tGo.\t2\tVa !\n\n3\tHi.\t4\tSalut !\n5\tRun!\t6\tCours !\n",
                    encoding="utf-8")
    pairs = load_tsv(path, columns=(1, 3))
    assert pairs == [("Go.", "Va !"), ("Hi.", "Salut !"), ("Run!", "Cours !")]
    assert load_tsv(path, columns=(1, 3), max_pairs=2, lowercase=True)[1] == ("hi.", "salut !")
    data = make_translation_data(str(path), columns=(1, 3))
    assert sum(len(v) for v in data.splits.values()) == 3 and data.src_vocab.level == "word"
    with pytest.raises(FileNotFoundError, match="missing.tsv"):
        load_tsv(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.tsv"
    bad.write_text("a\tb\nonly one field\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.tsv:2: 1 tab-separated field"):
        load_tsv(bad)
    with pytest.raises(ValueError, match="task="):
        make_translation_data("no-such-task")
