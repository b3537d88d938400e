"""word2vec: losses and gradients vs numpy, noise/subsampling formulas, text format, queries."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.models import word2vec as w2v
from seqjax.train.word2vec import train_word2vec


def _np_sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_ns_loss_and_grads(h, U, targets, negatives):
    """Direct per-example numpy loss and hand-derived gradients wrt h and U."""
    loss = 0.0
    gh = np.zeros_like(h)
    gU = np.zeros_like(U)
    for b in range(h.shape[0]):
        s = U[targets[b]] @ h[b]
        loss += -np.log(_np_sigmoid(s))
        # d/ds -log sig(s) = sig(s) - 1
        gh[b] += (_np_sigmoid(s) - 1) * U[targets[b]]
        gU[targets[b]] += (_np_sigmoid(s) - 1) * h[b]
        for k in negatives[b]:
            s = U[k] @ h[b]
            loss += -np.log(_np_sigmoid(-s))
            gh[b] += _np_sigmoid(s) * U[k]
            gU[k] += _np_sigmoid(s) * h[b]
    return loss, gh, gU


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_negative_sampling_loss_and_grad_match_numpy(mode):
    rng = np.random.default_rng(0)
    V, D, B, K, W = 7, 4, 5, 3, 2
    Vin = rng.normal(size=(V, D))
    U = rng.normal(size=(V, D))
    targets = rng.integers(0, V, B)
    negatives = rng.integers(0, V, (B, K))
    negatives[0, :] = targets[0]  # repeated ids must accumulate
    params = {"in": jnp.asarray(Vin, jnp.float32), "out": jnp.asarray(U, jnp.float32)}
    if mode == "skipgram":
        centres = rng.integers(0, V, B)
        centres[1] = centres[2]
        h = Vin[centres]
        loss, g = jax.value_and_grad(w2v.skipgram_loss)(params, centres, targets, negatives)
    else:
        ctx = rng.integers(0, V, (B, 2 * W))
        mask = (rng.random((B, 2 * W)) < 0.7).astype(np.float32)
        mask[:, 0] = 1
        h = (Vin[ctx] * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        loss, g = jax.value_and_grad(w2v.cbow_loss)(params, ctx, mask, targets, negatives)
    ref_loss, gh, gU = _np_ns_loss_and_grads(h, U, targets, negatives)
    gV = np.zeros_like(Vin)
    for b in range(B):
        if mode == "skipgram":
            gV[centres[b]] += gh[b]
        else:
            for j in range(2 * W):
                gV[ctx[b, j]] += mask[b, j] * gh[b] / mask[b].sum()
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
    np.testing.assert_allclose(g["out"], gU, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(g["in"], gV, rtol=1e-4, atol=1e-5)


def test_subsampling_probabilities_follow_mikolov():
    counts = np.array([1000, 100, 10, 1])
    t = 1e-2
    f = counts / counts.sum()
    expected = [min(1.0, np.sqrt(t / fi)) for fi in f]  # 1 - P_discard, P_discard = 1 - sqrt(t/f)
    np.testing.assert_allclose(w2v.keep_probabilities(counts, t), expected)
    assert np.all(w2v.keep_probabilities(counts, 0) == 1)
    # empirical keep rate matches
    ids = np.repeat(np.arange(4), counts)
    rng = np.random.default_rng(0)
    keep = w2v.keep_probabilities(counts, t)
    kept = np.concatenate([w2v.subsample(ids, keep, rng) for _ in range(50)])
    rate0 = (kept == 0).sum() / (50 * counts[0])
    assert abs(rate0 - expected[0]) < 0.01


def test_noise_distribution_is_count_to_three_quarters():
    counts = np.array([81, 16, 1, 0])
    p = w2v.noise_distribution(counts)
    np.testing.assert_allclose(p, np.array([27, 8, 1, 0]) / 36)
    np.testing.assert_allclose(p.sum(), 1)


def test_build_vocab_orders_by_count_and_applies_min_count():
    words, counts = w2v.build_vocab("b a c a b a d".split(), min_count=2)
    assert words == ["a", "b"] and counts.tolist() == [3, 2]


def test_skipgram_pairs_within_window():
    rng = np.random.default_rng(0)
    ids = np.arange(50)
    c, o = w2v.skipgram_pairs(ids, 3, rng)
    d = np.abs(c - o)
    assert d.min() >= 1 and d.max() <= 3
    assert len(set(zip(c.tolist(), o.tolist()))) == len(c)  # no duplicates from distinct positions
    # window 1 always included for interior words: every (i, i+1) pair appears
    pairs = set(zip(c.tolist(), o.tolist()))
    assert all((i, i + 1) in pairs and (i + 1, i) in pairs for i in range(49))


def test_word2vec_text_format_round_trip_and_plain_parser(tmp_path):
    rng = np.random.default_rng(1)
    words = ["the", "café", "n't", "<unk>"]
    vecs = rng.normal(size=(4, 3)).astype(np.float32)
    path = tmp_path / "v.txt"
    w2v.save_word2vec_text(path, words, vecs)
    got_words, got = w2v.load_word2vec_text(path)
    assert got_words == words
    np.testing.assert_array_equal(got, vecs)
    # an independent plain parser
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "4 3"
    for line, w, v in zip(lines[1:], words, vecs):
        parts = line.split()
        assert parts[0] == w
        np.testing.assert_array_equal(np.array(parts[1:], dtype=np.float32), v)
    with pytest.raises(ValueError, match="whitespace"):
        w2v.save_word2vec_text(path, ["a b"], vecs[:1])


def test_nearest_matches_numpy_argsort():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(30, 5))
    q = X[4]
    ids, sims = w2v.nearest(X, q, k=5, exclude=[4])
    cos = X @ q / (np.linalg.norm(X, axis=1) * np.linalg.norm(q))
    cos[4] = -np.inf
    ref = np.argsort(-cos)[:5]
    assert ids.tolist() == ref.tolist()
    np.testing.assert_allclose(sims, cos[ref])


def test_analogy_recovers_planted_offset():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(20, 8))
    # normalise the three terms so 3CosAdd's target is exactly X[3]'s direction
    Xn = w2v.normalize(X)
    X[3] = Xn[1] - Xn[0] + Xn[2]
    ids, _ = w2v.analogy(X, 0, 1, 2, k=1)
    assert ids[0] == 3


def _planted_corpus(rng, n_pairs=6, sentences=600, length=8):
    """Words 2i and 2i+1 form a planted pair: each sentence uses only one pair's words."""
    toks = []
    for _ in range(sentences):
        p = rng.integers(n_pairs)
        toks += [f"w{2 * p + b}" for b in rng.integers(0, 2, length)]
    return toks


@pytest.mark.parametrize("mode", ["skipgram", "cbow"])
def test_trained_vectors_put_planted_pairs_nearest(mode):
    rng = np.random.default_rng(0)
    toks = _planted_corpus(rng)
    cfg = w2v.Word2Vec(dim=16, mode=mode, window=2, negative=5, sample=0, epochs=3,
                       batch_size=64, steps_per_call=50, lr=0.05)
    model = train_word2vec(toks, cfg, seed=0)
    assert model.history[-1]["loss"] < model.history[0]["loss"]
    for i in range(12):
        w = f"w{i}"
        partner = f"w{i ^ 1}"
        assert model.nearest(w, 1)[0][0] == partner, (w, model.nearest(w, 3))


def test_config_validation():
    with pytest.raises(ValueError, match="mode"):
        w2v.Word2Vec(mode="glove")
    with pytest.raises(ValueError, match="window"):
        w2v.Word2Vec(window=0)
