"""Many-to-one classifiers and the MR loader."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax.data import sentiment as mr
from seqjax.models.classify import Classifier, evaluate
from seqjax.train import make_classifier_step

V = 12

CONFIGS = {
    "bilstm_final": dict(arch="lstm", bidirectional=True, pool="final"),
    "lstm_final": dict(arch="lstm", bidirectional=False, pool="final"),
    "gru_max_conv": dict(arch="gru", bidirectional=True, pool="max", conv_channels=5),
    "rnn_mean": dict(arch="rnn", bidirectional=False, pool="mean"),
    "tcn_final": dict(arch="tcn", bidirectional=False, pool="final", num_layers=2),
    "tcn_max_conv": dict(arch="tcn", bidirectional=False, pool="max", conv_channels=5),
}


def _model(name, **kw):
    return Classifier(vocab_size=V, embed_dim=6, hidden_size=7, num_classes=3,
                      **{**CONFIGS[name], **kw})


def _batch(rng, b=4, t=9):
    lengths = np.array([9, 3, 1, 6])[:b]
    tokens = rng.integers(1, V, (b, t)).astype(np.int32)
    return tokens, lengths


@pytest.mark.parametrize("name", list(CONFIGS))
def test_padding_does_not_change_predictions(name):
    model = _model(name)
    params = model.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    tokens, lengths = _batch(rng)
    ref = model.apply(params, tokens, lengths)
    # garbage in the pad positions, and extra padding
    noisy = tokens.copy()
    for b, L in enumerate(lengths):
        noisy[b, L:] = rng.integers(0, V, 9 - L)
    longer = np.concatenate([noisy, rng.integers(0, V, (4, 7))], axis=1)
    np.testing.assert_allclose(model.apply(params, longer, lengths), ref, rtol=1e-5, atol=1e-6)
    # sequences alone, unpadded (two of them: each new length is a new compilation)
    for b, L in list(enumerate(lengths))[1::2]:
        alone = model.apply(params, tokens[b:b + 1, :L], np.array([L]))
        np.testing.assert_allclose(alone[0], ref[b], rtol=1e-5, atol=1e-6)


def test_final_pooling_is_state_at_length():
    """Independent reference: a numpy LSTM over each sequence alone, fw and bw."""
    model = _model("bilstm_final")
    params = model.init(jax.random.key(1))
    rng = np.random.default_rng(1)
    tokens, lengths = _batch(rng)
    feats = np.asarray(model.features(params, tokens, lengths))
    emb = np.asarray(params["embed"])
    H = model.hidden_size

    def lstm(p, xs):
        h = np.zeros(H)
        c = np.zeros(H)
        for x in xs:
            z = x @ np.asarray(p["w_x"]) + h @ np.asarray(p["w_h"]) + np.asarray(p["b"])
            i, f, g, o = np.split(z, 4)
            sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
            c = sig(f) * c + sig(i) * np.tanh(g)
            h = sig(o) * np.tanh(c)
        return h

    for b, L in enumerate(lengths):
        xs = emb[tokens[b, :L]]
        fw = lstm(params["seq"][0]["fw"], xs)
        bw = lstm(params["seq"][0]["bw"], xs[::-1])
        np.testing.assert_allclose(feats[b], np.concatenate([fw, bw]), rtol=1e-4, atol=1e-5)


def test_max_and_mean_pool_only_read_valid_steps():
    for pool in ("max", "mean"):
        model = Classifier(vocab_size=V, embed_dim=4, hidden_size=5, arch="lstm",
                           bidirectional=False, pool=pool)
        params = model.init(jax.random.key(2))
        rng = np.random.default_rng(2)
        tokens, lengths = _batch(rng)
        feats = np.asarray(model.features(params, tokens, lengths))
        from seqjax.core.layers import stacked
        x = params["embed"][tokens]
        for b, L in enumerate(lengths):
            ys, _ = stacked(model.cells, params["seq"], x[b:b + 1, :L])
            ys = np.asarray(ys[0])
            ref = ys.max(0) if pool == "max" else ys.mean(0)
            np.testing.assert_allclose(feats[b], ref, rtol=1e-5, atol=1e-6)


def test_frozen_embeddings_get_no_gradient_and_pretrained_are_used():
    table = np.random.default_rng(3).normal(size=(V, 6)).astype(np.float32)
    for freeze in (True, False):
        model = _model("lstm_final", freeze_embeddings=freeze)
        params = model.init(jax.random.key(0), embeddings=table)
        np.testing.assert_array_equal(params["embed"], table)
        tokens, lengths = _batch(np.random.default_rng(0))
        g = jax.grad(lambda p: model.apply(p, tokens, lengths).sum())(params)
        assert (np.abs(np.asarray(g["embed"])).max() == 0) == freeze
    with pytest.raises(ValueError, match="embeddings.shape"):
        model.init(jax.random.key(0), embeddings=table[:, :3])


def test_validation_errors_name_the_argument():
    with pytest.raises(ValueError, match="arch"):
        Classifier(vocab_size=3, arch="cnn")
    with pytest.raises(ValueError, match="pool"):
        Classifier(vocab_size=3, pool="attention")
    model = _model("lstm_final")
    params = model.init(jax.random.key(0))
    with pytest.raises(ValueError, match="seq_lengths.shape"):
        model.apply(params, np.zeros((2, 3), np.int32), np.array([1, 2, 3]))


@pytest.mark.parametrize("kind", ["lstm", "tcn"])
def test_learns_contains_word_task(kind):
    """Label 1 iff token 3 occurs in the sentence; needs to reach 100% on held-out data."""
    rng = np.random.default_rng(0)
    n, t = 512, 12
    lengths = rng.integers(2, t + 1, n)
    tokens = rng.integers(4, V, (n, t)).astype(np.int32)
    labels = rng.integers(0, 2, n).astype(np.int32)
    for i in np.flatnonzero(labels):
        tokens[i, rng.integers(0, lengths[i])] = 3
    tokens[np.arange(t)[None] >= lengths[:, None]] = 0
    tokens[(labels == 0)[:, None] & (np.arange(t)[None] >= lengths[:, None])] = 3  # pad trap
    model = Classifier(vocab_size=V, embed_dim=8, hidden_size=16, arch=kind,
                       bidirectional=kind != "tcn", pool="max")
    params = model.init(jax.random.key(0))
    opt = optax.adam(1e-2)
    opt_state = opt.init(params)
    step = make_classifier_step(model, opt)
    tr, te = slice(0, 384), slice(384, n)
    key = jax.random.key(0)
    for epoch in range(25):
        for s in range(0, 384, 64):
            sl = slice(s, s + 64)
            params, opt_state, loss, acc = step(params, opt_state, tokens[tr][sl],
                                                lengths[tr][sl], labels[tr][sl], key)
    acc = evaluate(model, params, [(tokens[te], lengths[te], labels[te])])
    assert acc == 1.0, acc


# ----------------------------------------------------------------------------- MR loader
def test_mr_loader_counts_and_latin1(data_dir):
    data = mr.load_mr(data_dir)
    assert len(data.sentences) == 10662
    assert (data.labels == 1).sum() == 5331 and (data.labels == 0).sum() == 5331
    words = {w for s in data.sentences for w in s}
    assert any(any(ord(ch) > 127 for ch in w) for w in words)  # Latin-1 accents decoded
    raw = (data_dir / "rt-polarity" / "rt-polarity.pos").read_bytes().decode("latin-1")
    assert data.sentences[0] == raw.splitlines()[0].split()


def test_cv_folds_disjoint_and_covering():
    n = 10662
    folds = mr.cv_folds(n, 10, seed=0)
    tests = [te for _, te in folds]
    allt = np.concatenate(tests)
    assert len(allt) == n and len(np.unique(allt)) == n
    assert max(map(len, tests)) - min(map(len, tests)) <= 1
    for tr, te in folds:
        assert len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == n


def test_vocab_encode_and_bucket_batches():
    sents = [["a", "b"], ["b"], ["c", "b", "a", "a"], ["zz"]]
    vocab = mr.build_vocab(sents[:3])
    assert vocab[:2] == [mr.PAD, mr.UNK] and vocab[2] in ("a", "b")
    ids = mr.encode(sents, vocab)
    assert ids[3].tolist() == [1]
    labels = np.array([0, 1, 0, 1])
    batches = list(mr.bucket_batches(ids, labels, 3, pad_multiple=4))
    seen = []
    for tokens, lengths, labs in batches:
        assert tokens.shape[1] % 4 == 0
        for r in range(3):
            if labs[r] >= 0:
                seen.append(tuple(tokens[r, :lengths[r]]))
                assert (tokens[r, lengths[r]:] == 0).all()
    assert sorted(seen) == sorted(tuple(x) for x in ids)


def test_nnx_classifier_wrapper_matches_functional():
    from flax import nnx

    from seqjax.nn.classify import SequenceClassifier
    m = SequenceClassifier(Classifier(vocab_size=V, embed_dim=4, hidden_size=5),
                           rngs=nnx.Rngs(0))
    tokens, lengths = _batch(np.random.default_rng(0))
    ref = m.config.apply(m.params_tree(), tokens, lengths)
    np.testing.assert_allclose(m(jnp.asarray(tokens), jnp.asarray(lengths)), ref, rtol=1e-6)
    # trains with nnx.Optimizer; the "embed" Param is addressable by path
    opt = nnx.Optimizer(m, optax.sgd(0.1), wrt=nnx.Param)
    before = np.asarray(m.weights["embed"].get_value())
    grads = nnx.grad(lambda mod: mod(tokens, lengths).sum())(m)
    opt.update(m, grads)
    assert not np.allclose(m.weights["embed"].get_value(), before)
