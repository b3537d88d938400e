"""Tests of the language-model workflow: seqjax.models.lm, seqjax.models.sample, seqjax.train.tbptt,
seqjax.data.corpus and experiments/char_lm.py / word_lm.py.

References are independent of the code under test: the whole stream run at once (for the
chunked TBPTT forward), autodiff of hand-composed functions with and without ``stop_gradient``
(for the truncation), the full-prefix forward (for one-step sampling), numpy counts (for the
unigram baseline) and ``log2 V`` (for a uniform model).
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax.core.cells import make_cell
from seqjax.core.layers import stacked
from seqjax.data.base import softmax_cross_entropy
from seqjax.data.corpus import load_corpus, load_vocabulary, save_vocabulary
from seqjax.data.text import Vocabulary
from seqjax.models.lm import RECURRENT_LM_ARCHS, LanguageModel
from seqjax.models.sample import (
    choose,
    decode_init,
    encode_prime,
    generate,
    make_step_fn,
    sample_text,
)
from seqjax.train import (
    TokenStreams,
    evaluate_stream,
    fit,
    make_optimizer,
    make_tbptt_loss_fn,
    make_window_loss_fn,
    stream_layout,
    truncated_forward,
)

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import char_lm  # noqa: E402
import word_lm  # noqa: E402

V = 11


@functools.cache
def _model(arch: str) -> tuple[LanguageModel, dict]:
    """One small 2-layer model per arch and its params, shared by the tests (fewer compiles)."""
    model = LanguageModel(arch, V, embed_size=5, hidden_size=6, num_layers=2, kernel_size=3,
                          backend="scan")
    return model, model.init(jax.random.PRNGKey(1))


def _tokens(batch: int, steps: int, seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, V, (batch, steps)), jnp.int32)


def _ce(logits, targets):
    return jnp.mean(softmax_cross_entropy(logits, targets))


# ------------------------------------------------------------------------------------------
# The lectures' "hello" toy


def test_hello_rnn_learns_ello_from_hell():
    vocab = Vocabulary.build("helo", "char")
    model = LanguageModel("rnn", len(vocab), embed_size=4, hidden_size=16, backend="scan")
    x = vocab.encode("hell")[None]
    y = vocab.encode("ello")[None]

    def loss_fn(params, batch, key, train):
        logits, _ = model.apply(params, batch["x"], None)
        return _ce(logits, batch["y"]), {}

    result = fit(params=model.init(jax.random.PRNGKey(0)), loss_fn=loss_fn,
                 optimizer=make_optimizer("adam", 0.05), train_batches=lambda i: {"x": x, "y": y},
                 num_steps=150, run_dir=None, progress=False)
    params = result.state.params
    logits, _ = jax.jit(model.apply)(params, jnp.asarray(x))
    assert vocab.decode(np.argmax(np.asarray(logits[0]), -1)) == "ello"
    # greedy decoding from "h", feeding its own predictions back through the carry
    out = generate(model, params, vocab.encode("h"), 4, greedy=True)
    assert vocab.decode(out[0]) == "ello"
    assert sample_text(model, params, vocab, "h", 4, temperature=0) == "hello"


# ------------------------------------------------------------------------------------------
# Truncated BPTT


@pytest.mark.parametrize("arch", RECURRENT_LM_ARCHS)
def test_chunked_forward_equals_whole_stream(arch):
    """The carry handed from chunk to chunk reproduces one pass over the stream: carries and
    hidden states bit for bit; logits to float rounding (XLA may sum the readout matmul of a
    [3, 8] chunk in another order than that of the [3, 24] stream). The linear-recurrence cells
    (minGRU, minLSTM, LRU) compute their gates for all steps at once, outside the loop, where
    XLA vectorises a [3, 8] and a [3, 24] array differently (an ulp apart): to rounding."""
    model, params = _model(arch)
    linear = getattr(model.cells[0], "linear_recurrence", False)

    def same(a, b):
        if linear:
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    apply = jax.jit(lambda p, t, c: model.apply(p, t, c, return_hidden=True))
    toks = _tokens(3, 24)
    zero = model.initial_carry(3)
    full, carry_full, hidden_full = apply(params, toks, zero)
    carry, outs, hiddens = zero, [], []
    for c in range(3):
        out, carry, hidden = apply(params, toks[:, 8 * c : 8 * c + 8], carry)
        outs.append(out)
        hiddens.append(hidden)
        if c == 1:  # the carry entering chunk 3 is the whole-stream carry after 16 tokens
            _, ref, _ = apply(params, toks[:, :16], zero)
            for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(ref)):
                same(a, b)
    same(jnp.concatenate(hiddens, 1), hidden_full)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(outs, 1)), np.asarray(full),
                               rtol=1e-6, atol=1e-7)
    for a, b in zip(jax.tree.leaves(carry), jax.tree.leaves(carry_full)):
        same(a, b)


def test_tbptt_loss_threads_carry_and_resets_at_epoch():
    """make_tbptt_loss_fn over TokenStreams chunks == cross-entropy of the whole-stream run."""
    model, params = _model("lstm")
    ids = np.random.default_rng(3).integers(0, V, 2 * 33).astype(np.int32)
    streams = TokenStreams(ids, batch_size=2, seq_len=8)
    assert len(streams) == 4  # (33 - 1) // 8
    data = jnp.asarray(ids.reshape(2, 33))
    full, _ = jax.jit(model.apply)(params, data[:, :32])
    loss_fn = jax.jit(make_tbptt_loss_fn(model), static_argnums=3)
    carry = model.initial_carry(2)
    for step in range(4):
        batch = streams.batch(step)
        assert bool(batch.reset) == (step == 0)
        loss, aux, carry = loss_fn(params, batch, jax.random.PRNGKey(0), False, carry)
        ref = _ce(full[:, 8 * step : 8 * step + 8], data[:, 8 * step + 1 : 8 * step + 9])
        np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
        np.testing.assert_allclose(float(aux["bits"]), float(ref) / math.log(2), rtol=1e-6)
    # no gradient reaches the carry handed in (it is detached)
    g = jax.jit(jax.grad(lambda c: loss_fn(params, streams.batch(1), jax.random.PRNGKey(0),
                                           False, c)[0]))(carry)
    for leaf in jax.tree.leaves(g):
        np.testing.assert_array_equal(np.asarray(leaf), 0.0)
    # step 4 starts epoch 2: chunk 0 again, from a zero carry whatever the carry held
    batch = streams.batch(4)
    assert bool(batch.reset)
    loss, _, _ = loss_fn(params, batch, jax.random.PRNGKey(0), False, carry)
    np.testing.assert_allclose(float(loss), float(_ce(full[:, :8], data[:, 1:9])), rtol=1e-6)


def _float_stack(arch: str = "lstm"):
    """A 2-layer recurrent stack on float inputs (gradients w.r.t. the inputs themselves)."""
    cells = [make_cell(arch, 3, 5), make_cell(arch, 5, 5)]
    keys = jax.random.split(jax.random.PRNGKey(4), 3)
    params = {"cells": [c.init(k) for c, k in zip(cells, keys[:2])],
              "w": jax.random.normal(keys[2], (5,))}

    def apply(params, xs, carry):
        hs, carry = stacked(cells, params["cells"], xs, initial_carries=carry, backend="scan")
        return hs @ params["w"], carry

    xs = jax.random.normal(jax.random.PRNGKey(5), (2, 16, 3))
    return apply, params, xs


def test_no_gradient_flows_across_chunks():
    apply, params, xs = _float_stack("lstm")

    def chunk2_loss(x1, x2, truncate):
        _, carry = apply(params, x1, None)
        if truncate:
            ys, _ = truncated_forward(lambda x, c, part: apply(params, x, c), carry, x2)
        else:
            ys, _ = apply(params, x2, carry)
        return jnp.sum(ys**2)

    x1, x2 = xs[:, :8], xs[:, 8:]
    grad = jax.jit(jax.grad(chunk2_loss, argnums=(0, 1)), static_argnums=2)
    g1, g2 = grad(x1, x2, True)
    np.testing.assert_array_equal(np.asarray(g1), 0.0)
    # the untruncated reference: the same loss does depend on chunk 1
    g1_full, _ = grad(x1, x2, False)
    assert float(jnp.abs(g1_full).max()) > 1e-4
    # chunk 2's own gradient: the carry from chunk 1 as a constant
    carry_const = jax.tree.map(np.asarray, jax.jit(apply)(params, x1, None)[1])
    g2_ref = jax.jit(jax.grad(lambda x: jnp.sum(apply(params, x, carry_const)[0] ** 2)))(x2)
    np.testing.assert_allclose(np.asarray(g2), np.asarray(g2_ref), rtol=1e-6, atol=1e-7)


def test_k1_equal_T_is_full_bptt():
    model, params = _model("gru")
    ids = np.random.default_rng(7).integers(0, V, 17).astype(np.int32)
    batch = TokenStreams(ids, batch_size=1, seq_len=16).batch(0)
    loss_fn = make_tbptt_loss_fn(model)

    def tbptt(p):
        return loss_fn(p, batch, jax.random.PRNGKey(0), False, model.initial_carry(1))[0]

    def full(p):
        logits, _ = model.apply(p, jnp.asarray(ids[None, :16]))
        return _ce(logits, jnp.asarray(ids[None, 1:]))

    (la, ga), (lb, gb) = (jax.jit(jax.value_and_grad(f))(params) for f in (tbptt, full))
    np.testing.assert_allclose(float(la), float(lb), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_k2_backpropagates_only_the_last_k2_steps():
    apply, params, xs = _float_stack()
    k1, k2 = 16, 5

    def loss(p, x):
        ys, _ = truncated_forward(lambda xx, c, part: apply(p, xx, c), None, x, k2)
        return jnp.sum(ys[:, k1 - k2 :] ** 2)

    gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, xs)
    np.testing.assert_array_equal(np.asarray(gx[:, : k1 - k2]), 0.0)
    assert float(jnp.abs(gx[:, k1 - k2 :]).min()) > 0.0
    # reference: the head's carry as a numpy constant, gradients of the tail alone
    carry_const = jax.tree.map(np.asarray, jax.jit(apply)(params, xs[:, : k1 - k2], None)[1])

    def tail_loss(p, x_tail):
        return jnp.sum(apply(p, x_tail, carry_const)[0] ** 2)

    gp_ref, gx_ref = jax.jit(jax.grad(tail_loss, argnums=(0, 1)))(params, xs[:, k1 - k2 :])
    np.testing.assert_allclose(np.asarray(gx[:, k1 - k2 :]), np.asarray(gx_ref), rtol=1e-6,
                               atol=1e-7)
    for a, b in zip(jax.tree.leaves(gp), jax.tree.leaves(gp_ref)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # and the forward outputs are those of the whole chunk
    ys, _ = jax.jit(lambda x: truncated_forward(lambda xx, c, part: apply(params, xx, c),
                                                None, x, k2))(xs)
    np.testing.assert_allclose(np.asarray(ys), np.asarray(jax.jit(apply)(params, xs, None)[0]),
                               rtol=1e-6, atol=1e-7)


def test_tbptt_k2_loss_counts_last_k2_steps():
    model, params = _model("rnn")
    ids = np.random.default_rng(9).integers(0, V, 2 * 13).astype(np.int32)
    batch = TokenStreams(ids, batch_size=2, seq_len=12).batch(0)
    loss_fn = jax.jit(make_tbptt_loss_fn(model, k2=4), static_argnums=3)
    loss, aux, _ = loss_fn(params, batch, jax.random.PRNGKey(0), False, model.initial_carry(2))
    logits, _ = jax.jit(model.apply)(params, jnp.asarray(batch.inputs))
    np.testing.assert_allclose(float(loss), float(_ce(logits[:, 8:], batch.targets[:, 8:])),
                               rtol=1e-6)
    np.testing.assert_allclose(float(aux["bits"]) * math.log(2),
                               float(_ce(logits, batch.targets)), rtol=1e-6)


def test_tcn_window_loss_scores_last_validseqlen():
    """The TCN scheme: windows of seq_len advancing by validseqlen, loss on the last
    validseqlen positions."""
    model, params = _model("tcn")
    ids = np.random.default_rng(20).integers(0, V, 2 * 41).astype(np.int32)
    streams = TokenStreams(ids, batch_size=2, seq_len=16, history=6)
    assert len(streams) == 3  # windows start at 0, 10, 20 (+16 + 1 <= 41)
    batch = streams.batch(2)
    data = ids.reshape(2, 41)
    np.testing.assert_array_equal(batch.inputs, data[:, 20:36])
    np.testing.assert_array_equal(batch.targets, data[:, 21:37])
    loss, aux = jax.jit(make_window_loss_fn(model), static_argnums=3)(
        params, batch, jax.random.PRNGKey(0), False)
    logits, _ = jax.jit(model.apply)(params, jnp.asarray(batch.inputs))
    ref = _ce(logits[:, 6:], jnp.asarray(batch.targets[:, 6:]))
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def test_backend_string_reaches_rnn(monkeypatch):
    import seqjax.core.layers

    seen = []
    real = seqjax.core.layers.rnn

    def spy(*args, **kwargs):
        seen.append(kwargs.get("backend"))
        return real(*args, **{**kwargs, "backend": "scan"})

    monkeypatch.setattr(seqjax.core.layers, "rnn", spy)
    model = LanguageModel("gru", V, embed_size=5, hidden_size=6, num_layers=2, backend="pallas")
    model.apply(_model("gru")[1], _tokens(1, 3))
    assert seen == ["pallas", "pallas"]
    with pytest.raises(ValueError, match="backend='cuda'"):
        LanguageModel("gru", V, 5, 6, backend="cuda")


def test_stream_layout_scores_every_target_once():
    ids = np.arange(23, dtype=np.int32)
    x, y, valid = stream_layout(ids, 4)
    assert sorted(y[valid].tolist()) == list(range(1, 23))
    np.testing.assert_array_equal(y[valid], x[valid] + 1)


# ------------------------------------------------------------------------------------------
# Sampling


@pytest.mark.parametrize("arch", ["lstm", "gru", "tcn"])
def test_one_step_sampling_matches_full_prefix(arch):
    model, params = _model(arch)
    toks = _tokens(2, 30, seed=11)  # longer than the TCN's receptive field (13)
    full, _ = jax.jit(model.apply)(params, toks)
    step = make_step_fn(model)
    state = decode_init(model, 2)
    for t in range(30):
        logits, state = step(params, state, toks[:, t])
        np.testing.assert_allclose(np.asarray(logits), np.asarray(full[:, t]), rtol=1e-5,
                                   atol=1e-6)


def test_temperature_to_zero_is_greedy_and_seed_reproducible():
    model, params = _model("lstm")
    # logits far apart, as after training
    params = {**params, "readout": {"w": params["readout"]["w"] * 100,
                                    "b": params["readout"]["b"]}}
    prime = np.array([1, 2, 3])
    greedy = generate(model, params, prime, 40, greedy=True)
    assert len(set(greedy[0].tolist())) > 2
    np.testing.assert_array_equal(generate(model, params, prime, 40, temperature=1e-6, seed=5),
                                  greedy)
    np.testing.assert_array_equal(generate(model, params, prime, 40, temperature=0.0), greedy)
    a = generate(model, params, prime, 40, temperature=1.0, seed=3)
    np.testing.assert_array_equal(a, generate(model, params, prime, 40, temperature=1.0, seed=3))
    assert not np.array_equal(a, generate(model, params, prime, 40, temperature=1.0, seed=4))


def test_top_k_never_samples_outside_top_k():
    logits = jax.random.normal(jax.random.PRNGKey(13), (1, 20)) * 2
    keys = jax.random.split(jax.random.PRNGKey(14), 4000)
    draws = np.asarray(jax.vmap(lambda k: choose(logits, k, top_k=3))(keys))[:, 0]
    top3 = set(np.argsort(-np.asarray(logits[0]))[:3].tolist())
    assert set(draws.tolist()) == top3
    # and within the top 3 the frequencies follow the renormalised softmax
    p = np.exp(np.asarray(logits[0])[sorted(top3)])
    p /= p.sum()
    freq = np.array([np.mean(draws == i) for i in sorted(top3)])
    np.testing.assert_allclose(freq, p, atol=0.03)


def test_unknown_prime_character_is_listed():
    vocab = Vocabulary.build("abc\n", "char")
    with pytest.raises(ValueError, match=r"\['Z', 'q'\]"):
        encode_prime(vocab, "abqZ")
    with pytest.raises(ValueError, match="empty"):
        encode_prime(vocab, "")


# ------------------------------------------------------------------------------------------
# Vocabulary, corpora, metrics


def test_vocab_round_trip(tmp_path):
    text = "To be, or not\tto be:\n« that » is the question — 42!\n"
    char = Vocabulary.build(text, "char")
    path = save_vocabulary(char, tmp_path / "char.json")
    back = load_vocabulary(path)
    assert back.tokens == char.tokens and back.level == "char"
    np.testing.assert_array_equal(back.encode(text), char.encode(text))
    assert back.decode(back.encode(text)) == text
    word = Vocabulary.build("the cat <unk> sat\nthe end\n", "word")
    save_vocabulary(word, tmp_path)  # a directory gets vocab.json
    back = load_vocabulary(tmp_path)
    assert back.tokens == word.tokens and back.level == "word"
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_vocabulary(tmp_path / "nowhere.json")


@pytest.mark.parametrize("arch", ["gru", "tcn"])
def test_uniform_model_bits_per_char_is_log2_V(arch):
    model, params = _model(arch)
    # logits all zero: the uniform distribution
    params = {**params, "readout": jax.tree.map(jnp.zeros_like, params["readout"])}
    ids = np.random.default_rng(16).integers(0, V, 1000).astype(np.int32)
    r = evaluate_stream(model, params, ids, batch_size=3, seq_len=40,
                        history=0 if arch == "gru" else 13)
    assert r["count"] == 999  # every target once
    np.testing.assert_allclose(r["bits"], math.log2(V), rtol=1e-6)


def test_evaluate_stream_equals_one_pass():
    """Chunked evaluation with the carry == one pass per stream (recurrent); TCN windows
    with enough history == the full pass (its receptive field fits in the history)."""
    ids = np.random.default_rng(17).integers(0, V, 301).astype(np.int32)
    for arch, history in (("gru", 0), ("tcn", 13)):
        model, params = _model(arch)
        r = evaluate_stream(model, params, ids, batch_size=3, seq_len=40, history=history)
        x, y, valid = stream_layout(ids, 3)
        logits, _ = jax.jit(model.apply)(params, jnp.asarray(x))
        ce = np.asarray(softmax_cross_entropy(logits, jnp.asarray(y)))
        np.testing.assert_allclose(r["loss"], ce[valid].mean(), rtol=1e-5)


def test_tinyshakespeare_training_beats_unigram(data_dir):
    corpus = load_corpus("tinyshakespeare", data_dir)
    # the unigram baseline, independently: character counts of the raw training text
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    train_text = text[: int(len(text) * 0.9)]
    valid_text = text[int(len(text) * 0.9) : int(len(text) * 0.9) + int(len(text) * 0.05)]
    counts = Counter(train_text)
    total = sum(counts.values())
    valid_sample = valid_text[:20_001]
    unigram = -np.mean([math.log2(counts[c] / total) for c in valid_sample[1:]])
    assert 4.0 < unigram < 5.5

    model = LanguageModel("lstm", len(corpus.vocab), embed_size=24, hidden_size=96,
                          backend="scan")
    streams = TokenStreams(corpus.splits["train"], batch_size=32, seq_len=32)
    result = fit(params=model.init(jax.random.PRNGKey(0)), loss_fn=make_tbptt_loss_fn(model),
                 optimizer=make_optimizer("adam", 1e-2, clip_norm=1.0),
                 train_batches=streams.batch, num_steps=250, run_dir=None, progress=False,
                 extra=model.initial_carry(32))
    r = evaluate_stream(model, result.state.params, corpus.splits["valid"], batch_size=16,
                        seq_len=128, max_tokens=20_000)
    assert r["bits"] < unigram - 1.2, (r["bits"], unigram)


def test_bad_inputs(tmp_path, data_dir):
    with pytest.raises(ValueError, match="arch='transformer' must be one of"):
        LanguageModel("transformer", V, 4, 4)
    with pytest.raises(FileNotFoundError, match="tinyshakespeare, ptb-char") as err:
        load_corpus("shakespear", data_dir)
    assert "shakespear" in str(err.value)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "tinyshakespeare" / "input.txt")):
        load_corpus("tinyshakespeare", tmp_path)
    with pytest.raises(SystemExit):
        char_lm.main(["--corpus", "tinyshakespeare", "--model", "transformer",
                      "--out", str(tmp_path / "x")])
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "missing.txt")):
        char_lm.main(["--corpus", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "y")])
    with pytest.raises(ValueError, match="seq_len=50 needs at least 51"):
        TokenStreams(np.zeros(100, np.int32), batch_size=4, seq_len=50)


# ------------------------------------------------------------------------------------------
# The experiment scripts


def _tiny_args(corpus: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["--corpus", str(corpus), "--out", str(out), "--steps", str(steps),
            "--embed", "8", "--hidden", "16", "--layers", "1", "--seq-len", "16",
            "--batch-size", "4", "--eval-every", "6", "--eval-tokens", "500",
            "--sample-len", "20", "--no-progress", *extra]


def test_char_lm_train_sample_resume(tmp_path, data_dir, capsys):
    corpus = tmp_path / "small.txt"
    text = (data_dir / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    corpus.write_text(text[:12_000], encoding="utf-8")
    full = tmp_path / "full"
    res = char_lm.main(_tiny_args(corpus, full, 12))
    for name in ("vocab.json", "model.json", "curves.png", "results.json", "metrics.jsonl",
                 "config.json"):
        assert (full / name).is_file(), name
    assert res["valid_bpc"] > 0 and res["test_bpc"] > 0
    assert json.loads((full / "results.json").read_text())["test_bpc"] == res["test_bpc"]
    samples = (full / "samples.txt").read_text()
    assert samples.count("=== step") == 2 and "=== step 12" in samples

    # interrupted after 6 steps, then resumed: the same parameters as the uninterrupted run
    part = tmp_path / "part"
    char_lm.main(_tiny_args(corpus, part, 6))
    char_lm.main(["--out", str(part), "--resume", "--steps", "12", "--no-progress"])
    _, p_full, vocab, _ = char_lm.load_run(full)
    _, p_part, _, _ = char_lm.load_run(part)
    for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_part)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    capsys.readouterr()
    argv = ["sample", "--run", str(full), "--prime", "ROMEO:", "--temperature", "0.8",
            "-n", "50", "--seed", "1"]
    text1 = char_lm.main(argv)
    assert capsys.readouterr().out.strip() == text1.strip()
    assert text1.startswith("ROMEO:") and len(text1) == 56
    assert char_lm.main(argv) == text1
    assert set(text1) <= set(vocab.tokens)
    with pytest.raises(ValueError, match=r"\['@'\]"):
        char_lm.main(["sample", "--run", str(full), "--prime", "@ROMEO"])


def test_word_lm_perplexity_and_sample(tmp_path, data_dir):
    corpus = tmp_path / "small.txt"
    text = (data_dir / "ptb" / "ptb.valid.txt").read_text(encoding="utf-8")
    corpus.write_text(text[:30_000], encoding="utf-8")
    out = tmp_path / "word"
    res = word_lm.main(_tiny_args(corpus, out, 4, "--tie", "true", "--hidden", "8"))
    assert res["level"] == "word" and res["test_ppl"] > 1
    vocab = load_vocabulary(out)
    assert vocab.level == "word" and "<unk>" in vocab.index
    np.testing.assert_allclose(res["test_ppl"], math.exp(res["test"]["loss"]), rtol=1e-6)
    sample = word_lm.main(["sample", "--run", str(out), "--prime", "the company", "-n", "10"])
    assert sample.startswith("the company ")
