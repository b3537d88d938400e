"""Issue #17, models and data: no bad input reaches the user as a traceback.

A table-driven sweep over the public entry points of the models (``SequenceModel``,
``LanguageModel``, ``Classifier``, sampling, word2vec), the data package and the analysis
functions: every case asserts the exception type and, with ``match=``, that the message names the
argument or the value. Then the value tests: padding (NaN included) changes no loss and no
gradient of any task, nor a model output; out-of-range ids under ``jit`` give NaN, not another
embedding row.
"""

from __future__ import annotations

import functools
import gzip
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from seqjax import GRU, LSTM
from seqjax.analysis import (
    by_distance,
    cell_gradient_flow,
    cell_states,
    char_features,
    clipped_norm,
    gate_statistics,
    gate_trajectory,
    geometric_rate,
    grad_norm_history,
    hidden_states,
    html_text,
    model_gradient_flow,
    model_states,
    recurrent_blocks,
    singular_values,
    spectral_radius,
    step_jacobian,
    track_grad_norms,
    unit_correlations,
)
from seqjax.data import (
    AddingTask,
    Batch,
    CopyMemoryTask,
    CopyTask,
    ImageSequenceTask,
    LanguageModelTask,
    ParallelData,
    PolyphonicMusicTask,
    Vocabulary,
    bucket_batches,
    cv_folds,
    get_task,
    load_corpus,
    load_mr,
    load_music,
    load_ptb,
    load_tsv,
    load_vocabulary,
    make_translation_data,
    pad_batch,
    read_idx,
    split_pairs,
    translation,
)
from seqjax.models import SequenceModel, check_params, hidden_for_params
from seqjax.models.classify import Classifier, accuracy, cross_entropy
from seqjax.models.lm import LanguageModel
from seqjax.models.sample import (
    choose,
    decode_init,
    decode_step,
    decode_tokens,
    encode_prime,
    generate,
    sample_text,
)
from seqjax.models.word2vec import (
    Word2Vec,
    Word2VecModel,
    analogy,
    build_vocab,
    cbow_examples,
    init_params,
    load_word2vec_text,
    nearest,
    noise_distribution,
    save_word2vec_text,
    skipgram_loss,
    skipgram_pairs,
)
from seqjax.train.word2vec import train_word2vec

#: Public names (of ``seqjax.__all__`` or their module's ``__all__``) this sweep exercises.
COVERED = {
    # seqjax.models / lm / classify / sample / embeddings
    "SequenceModel", "check_params", "hidden_for_params", "LanguageModel", "Classifier",
    "cross_entropy", "accuracy",
    "generate", "decode_step", "decode_init", "choose", "encode_prime", "decode_tokens",
    "sample_text", "train_word2vec", "build_vocab", "Word2Vec", "Word2VecModel", "nearest",
    "analogy", "load_word2vec_text", "save_word2vec_text", "noise_distribution",
    "skipgram_pairs", "cbow_examples", "skipgram_loss", "init_params",
    # seqjax.data
    "get_task", "load_music", "PolyphonicMusicTask", "load_corpus", "load_vocabulary",
    "read_idx", "load_ptb", "pad_batch", "Vocabulary", "LanguageModelTask", "ImageSequenceTask",
    "AddingTask", "CopyMemoryTask", "CopyTask", "bucket_batches", "cv_folds", "load_mr",
    "ParallelData", "load_tsv", "make_translation_data", "split_pairs",
    # seqjax.analysis
    "model_states", "model_gradient_flow", "cell_gradient_flow", "cell_states",
    "gate_trajectory", "gate_statistics", "singular_values", "spectral_radius",
    "recurrent_blocks", "step_jacobian", "hidden_states", "unit_correlations", "char_features",
    "html_text", "grad_norm_history", "track_grad_norms", "by_distance", "geometric_rate",
    "clipped_norm",
}

KEY = jax.random.PRNGKey(0)

# Tiny models, built once.
SM = SequenceModel("gru", 3, 2, 4)                        # float inputs [B, T, 3]
SM_TOK = SequenceModel("lstm", 5, 2, 4, embed_size=3)     # token ids in [0, 5)
LM = LanguageModel("gru", 7, 4, 5)
LM_TIED = LanguageModel("gru", 7, 4, 4, tie_weights=True)
CLF = Classifier(9, 4, 2, "gru", 4, bidirectional=False)


@functools.lru_cache(maxsize=None)
def params(model):
    """Zeros of the shapes of ``model.init``: no compilation, and every check is on shapes."""
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(model.init, KEY))


@functools.lru_cache(maxsize=None)
def real_params(model):
    """Random params of the shapes of ``model.init`` (numpy: no compilation)."""
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda s: jnp.asarray(0.5 * rng.standard_normal(s.shape), s.dtype),
                        jax.eval_shape(model.init, KEY))


CLF_FWD = jax.jit(CLF.apply)


X = np.zeros((2, 5, 3), np.float32)
TOK = np.ones((2, 5), np.int32)
LEN = np.array([5, 3], np.int32)
IDS = np.array([0, 1, 2, 3], np.int32)
CELL = GRU(3, 4)
CELL_P = params(CELL)
WORDS = ("the cat sat on the mat and the dog sat on the log " * 4).split()[:50]


def w2v_model():
    return Word2VecModel(["a", "b", "c"], np.array([3, 2, 1]), np.eye(3, dtype=np.float32))


def lm_task(data=None, seq_len=4):
    vocab = Vocabulary(list("abc"), "char")
    data = data or {k: np.array([0, 1, 2, 1, 0, 2, 1], np.int32) for k in
                    ("train", "valid", "test")}
    return LanguageModelTask("toy", vocab, data, seq_len)


def image_splits(labels):
    x = np.zeros((4, 6), np.uint8)
    return {k: (x, np.asarray(labels)) for k in ("train", "valid", "test")}


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
    return path


def savemat(path, **arrays):
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, arrays)
    return path


def cells(*rolls):
    c = np.empty((1, len(rolls)), dtype=object)
    for i, r in enumerate(rolls):
        c[0, i] = r
    return c


def music_file(tmp, **arrays):
    return savemat(tmp / "music" / "JSB_Chorales.mat", **arrays)


ROLL = np.zeros((5, 88), np.uint8)
GOOD_MAT = {"traindata": cells(ROLL), "validdata": cells(ROLL), "testdata": cells(ROLL)}


def corrupt_music(tmp, content):
    write(tmp / "music" / "JSB_Chorales.mat", content)
    return load_music("jsb", tmp)


def truncated_mat(tmp):
    path = music_file(tmp, **GOOD_MAT)
    path.write_bytes(path.read_bytes()[:150])
    return load_music("jsb", tmp)


def ptb_files(tmp, train="", valid="a b\n", test="a b\n"):
    for split, text in (("train", train), ("valid", valid), ("test", test)):
        write(tmp / "ptb" / f"ptb.{split}.txt", text)
    return load_ptb("word", tmp)


def idx_bytes(shape=(2, 3), dtype_code=0x08, data=None):
    header = bytes([0, 0, dtype_code, len(shape)]) + b"".join(
        int(d).to_bytes(4, "big") for d in shape)
    return header + (bytes(int(np.prod(shape))) if data is None else data)


def mr_files(tmp, pos="", neg="a b\n"):
    write(tmp / "rt-polarity" / "rt-polarity.pos", pos)
    write(tmp / "rt-polarity" / "rt-polarity.neg", neg)
    return load_mr(tmp)


def parallel():
    return ParallelData.from_pairs("toy", [("ab", "ba"), ("cd", "dc"), ("ef", "fe"),
                                           ("gh", "hg")], fractions=(0.25, 0.25))


def lm_apply(model, p, tokens, carry=None):
    return model.apply(p, tokens, carry)


CASES = [
    # ---------------------------------------------------------------- SequenceModel.apply
    pytest.param(lambda t: SM.apply(params(SM), X[..., 0]), ValueError,
                 r"inputs.shape=\(2, 5\) must be \(batch, steps, input_size=3\)",
                 id="SequenceModel.apply-floats-rank2"),
    pytest.param(lambda t: SM.apply(params(SM), np.zeros((2, 5, 4), np.float32)), ValueError,
                 r"inputs.shape=\(2, 5, 4\).*input_size=3", id="SequenceModel.apply-feature-size"),
    pytest.param(lambda t: SM.apply(params(SM), X.astype(np.int32)), TypeError,
                 "inputs.dtype=int32", id="SequenceModel.apply-int-features"),
    pytest.param(lambda t: SM.apply(params(SM), X, LEN[:1]), ValueError,
                 r"lengths.shape=\(1,\) must be \(2,\)", id="SequenceModel.apply-lengths-shape"),
    pytest.param(lambda t: SM.apply(params(SM), X, LEN.astype(np.float32)), TypeError,
                 "lengths.dtype=float32", id="SequenceModel.apply-float-lengths"),
    pytest.param(lambda t: SM.apply(params(SM), X, np.array([6, 1])), ValueError,
                 r"lengths must lie in \[0, T=5\], got min 1 max 6",
                 id="SequenceModel.apply-lengths-past-T"),
    pytest.param(lambda t: SM_TOK.apply(params(SM_TOK), TOK.astype(np.float32)), TypeError,
                 "inputs.dtype=float32 must be integer token ids",
                 id="SequenceModel.apply-float-token-ids"),
    pytest.param(lambda t: SM_TOK.apply(params(SM_TOK), TOK * 5), ValueError,
                 r"inputs must lie in \[0, vocab_size=5\), got min 5 max 5",
                 id="SequenceModel.apply-token-id-too-large"),
    pytest.param(lambda t: SM_TOK.apply(params(SM_TOK), -TOK, LEN), ValueError,
                 "got min -1", id="SequenceModel.apply-negative-token-id"),
    pytest.param(lambda t: SM.apply(params(SequenceModel("gru", 3, 2, 5)), X), ValueError,
                 r"params\['encoder'\]\[0\]\['\w+'\].shape=\(\d+,( \d+)?\) must be",
                 id="SequenceModel.apply-params-other-hidden-size"),
    pytest.param(lambda t: SM.apply(params(SequenceModel("lstm", 3, 2, 4)), X), ValueError,
                 r"params\['encoder'\]\[0\]", id="SequenceModel.apply-params-other-cell"),
    pytest.param(lambda t: SM.apply(None, X), TypeError, "params must be the params pytree",
                 id="SequenceModel.apply-params-none"),
    pytest.param(lambda t: SM.apply(without(params(SM), "readout"), X), ValueError,
                 r"params\['readout'\]\['b'\] is missing",
                 id="SequenceModel.apply-params-missing-readout"),
    pytest.param(lambda t: SM.apply({**params(SM), "embed": jnp.zeros((3, 2))}, X), ValueError,
                 r"params\['embed'\] \(shape \(3, 2\)\) is not a parameter",
                 id="SequenceModel.apply-params-extra-entry"),
    pytest.param(lambda t: jax.jit(SM.apply)(params(SequenceModel("gru", 3, 2, 5)), X),
                 ValueError, r"params\['encoder'\]", id="SequenceModel.apply-other-params-jit"),
    pytest.param(lambda t: SequenceModel("gru", 3, 2, 4, embed_size=-1), ValueError,
                 "embed_size must be an int >= 0", id="SequenceModel-negative-embed-size"),
    pytest.param(lambda t: SequenceModel("gru", 3, 2, 4, backend="cuda"), ValueError,
                 "backend='cuda'", id="SequenceModel-unknown-backend"),
    pytest.param(lambda t: hidden_for_params(SM, 0), ValueError, "target=0",
                 id="hidden_for_params-zero-target"),
    pytest.param(lambda t: Classifier(9, conv_channels=-2), ValueError, "conv_channels=-2",
                 id="Classifier-negative-conv-channels"),
    pytest.param(lambda t: check_params(SM, [1, 2]), TypeError,
                 r"params must be the params pytree of SequenceModel.init\(key\) \(a dict\), got "
                 "list", id="check_params-list"),
    # ---------------------------------------------------------------- LanguageModel.apply
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK.astype(np.float32)), TypeError,
                 "tokens.dtype=float32 must be integer token ids",
                 id="LanguageModel.apply-float-tokens"),
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK.astype(bool)), TypeError,
                 "tokens.dtype=bool", id="LanguageModel.apply-bool-tokens"),
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK[..., None]), ValueError,
                 r"tokens.shape=\(2, 5, 1\) must be \[B, T\] = \(batch, steps\)",
                 id="LanguageModel.apply-tokens-rank3"),
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK * 7), ValueError,
                 r"tokens must lie in \[0, vocab_size=7\), got min 7 max 7",
                 id="LanguageModel.apply-token-id-too-large"),
    pytest.param(lambda t: lm_apply(LM, params(LM), -TOK), ValueError, "min -1 max -1",
                 id="LanguageModel.apply-negative-token-id"),
    pytest.param(lambda t: lm_apply(LM, params(LanguageModel("gru", 8, 4, 5)), TOK), ValueError,
                 r"params\['embed'\].shape=\(8, 4\) must be \(7, 4\)",
                 id="LanguageModel.apply-params-other-vocab"),
    pytest.param(lambda t: lm_apply(LM, params(LanguageModel("lstm", 7, 4, 5)), TOK),
                 ValueError, r"params\['encoder'\]\[0\]",
                 id="LanguageModel.apply-params-other-cell"),
    pytest.param(lambda t: lm_apply(LM, params(LanguageModel("gru", 7, 4, 6)), TOK), ValueError,
                 r"params\['encoder'\]\[0\]\['\w+'\].shape=\(\d+,( \d+)?\) must be",
                 id="LanguageModel.apply-params-other-hidden"),
    pytest.param(lambda t: lm_apply(LM_TIED, params(LanguageModel("gru", 7, 4, 4)), TOK),
                 ValueError, r"params\['readout'\]\['w'\] \(shape \(4, 7\)\) is not a parameter",
                 id="LanguageModel.apply-untied-params-for-tied-model"),
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK, [None, None]), ValueError,
                 "carry must be a list of 1 per-layer carries",
                 id="LanguageModel.apply-carry-length"),
    pytest.param(lambda t: lm_apply(LM, params(LM), TOK, LM.initial_carry(3)), ValueError,
                 r"carry\[0\] shapes \[\(3, 5\)\] must be \[\(2, 5\)\]",
                 id="LanguageModel.apply-carry-batch"),
    pytest.param(lambda t: jax.jit(lm_apply, static_argnums=0)(
        LM, params(LanguageModel("gru", 8, 4, 5)), TOK), ValueError, r"params\['embed'\]",
        id="LanguageModel.apply-other-params-jit"),
    # ---------------------------------------------------------------- Classifier
    pytest.param(lambda t: CLF.apply(params(CLF), TOK.astype(np.float32), LEN), TypeError,
                 "tokens.dtype=float32", id="Classifier.apply-float-tokens"),
    pytest.param(lambda t: CLF.apply(params(CLF), TOK[0], LEN), ValueError,
                 r"tokens.shape=\(5,\) must be \[B, T\]", id="Classifier.apply-tokens-rank1"),
    pytest.param(lambda t: CLF.apply(params(CLF), TOK * 9, LEN), ValueError,
                 r"tokens must lie in \[0, vocab_size=9\), got min 9 max 9",
                 id="Classifier.apply-token-id-too-large"),
    pytest.param(lambda t: CLF.apply(params(CLF), TOK, LEN.astype(np.float32)), TypeError,
                 "seq_lengths.dtype=float32", id="Classifier.apply-float-lengths"),
    pytest.param(lambda t: CLF.apply(params(CLF), TOK, LEN[None]), ValueError,
                 r"seq_lengths.shape=\(1, 2\) must be \(2,\)",
                 id="Classifier.apply-lengths-shape"),
    pytest.param(lambda t: CLF.apply(params(CLF), TOK, np.array([9, -1])), ValueError,
                 r"seq_lengths must lie in \[0, T=5\], got min -1 max 9",
                 id="Classifier.apply-lengths-range"),
    pytest.param(lambda t: CLF.apply(params(Classifier(10, 4, 2, "gru", 4, bidirectional=False)),
                                     TOK, LEN), ValueError,
                 r"params\['embed'\].shape=\(10, 4\) must be \(9, 4\)",
                 id="Classifier.apply-params-other-vocab"),
    pytest.param(lambda t: CLF.apply(params(Classifier(9, 4, 2, "gru", 4)), TOK, LEN),
                 ValueError, r"params\['out'\]\['w'\].shape=\(8, 2\) must be \(4, 2\)",
                 id="Classifier.apply-params-bidirectional"),
    pytest.param(lambda t: cross_entropy(jnp.zeros((2, 3)), np.array([0, -1])), ValueError,
                 r"labels must lie in \[0, 3\), got min -1", id="cross_entropy-label-minus-one"),
    pytest.param(lambda t: cross_entropy(jnp.zeros((2, 3)), np.array([0.0, 1.0])), TypeError,
                 "labels.dtype=float64", id="cross_entropy-float-labels"),
    pytest.param(lambda t: accuracy(jnp.zeros((2, 3)), np.array([0, 1, 2])), ValueError,
                 r"labels.shape=\(3,\) must be \(2,\)", id="accuracy-labels-shape"),
    # ---------------------------------------------------------------- sampling
    pytest.param(lambda t: generate(LM, params(LM), np.array([1.0, 2.0]), 3), TypeError,
                 "prime.dtype=float64", id="generate-float-prime"),
    pytest.param(lambda t: generate(LM, params(LM), np.array([1, 7]), 3), ValueError,
                 r"prime must lie in \[0, vocab_size=7\), got min 1 max 7",
                 id="generate-prime-id-too-large"),
    pytest.param(lambda t: generate(LM, params(LM), np.zeros(0, np.int32), 3), ValueError,
                 r"prime.shape=\(1, 0\)", id="generate-empty-prime"),
    pytest.param(lambda t: generate(LM, params(LanguageModel("gru", 7, 4, 6)), [1], 3),
                 ValueError, r"params\['encoder'\]", id="generate-params-other-model"),
    pytest.param(lambda t: generate(SM, params(SM), [1], 3), TypeError,
                 "model must be a seqjax.models.lm.LanguageModel",
                 id="generate-not-a-language-model"),
    pytest.param(lambda t: generate(LM, params(LM), [1], -1), ValueError, "num=-1",
                 id="generate-negative-num"),
    pytest.param(lambda t: generate(LM, params(LM), [1], 2, num_samples=0), ValueError,
                 "num_samples=0", id="generate-num-samples-0"),
    pytest.param(lambda t: generate(LM, params(LM), [1], 2, seed=0.5), TypeError, "seed=0.5",
                 id="generate-float-seed"),
    pytest.param(lambda t: generate(LM, params(LM), [1], 2, temperature=-1.0), ValueError,
                 "temperature=-1.0", id="generate-negative-temperature"),
    pytest.param(lambda t: generate(LM, params(LM), [1], 2, top_k=0), ValueError, "top_k=0",
                 id="generate-top-k-0"),
    pytest.param(lambda t: decode_step(LM, params(LM), LM.initial_carry(2), np.array([1.5, 2])),
                 TypeError, "tokens.dtype=float64", id="decode_step-float-tokens"),
    pytest.param(lambda t: decode_step(LM, params(LM), LM.initial_carry(2), TOK), ValueError,
                 r"tokens.shape=\(2, 5\) must be \(batch,\)", id="decode_step-tokens-rank2"),
    pytest.param(lambda t: decode_step(LM, params(LM), LM.initial_carry(2), np.array([1, 9])),
                 ValueError, "got min 1 max 9", id="decode_step-token-id-too-large"),
    pytest.param(lambda t: decode_init(LM, 0), ValueError, "batch=0", id="decode_init-batch-0"),
    pytest.param(lambda t: choose(jnp.zeros((2, 3)), KEY, temperature=float("nan")), ValueError,
                 "temperature=nan", id="choose-nan-temperature"),
    pytest.param(lambda t: encode_prime(Vocabulary(list("ab"), "char"), ["a"]), TypeError,
                 "prime must be a str", id="encode_prime-list"),
    pytest.param(lambda t: decode_tokens(Vocabulary(list("ab"), "char"), [0, 2]), ValueError,
                 r"ids must lie in \[0, 2\).*max 2", id="decode_tokens-id-too-large"),
    pytest.param(lambda t: sample_text(LM, params(LM), Vocabulary(list("ab"), "char"), "a", 2),
                 ValueError, "the vocabulary has 2 tokens, the model 7",
                 id="sample_text-vocabulary-size"),
    # ---------------------------------------------------------------- word2vec
    pytest.param(lambda t: train_word2vec("the cat sat on the mat", Word2Vec(dim=4)), TypeError,
                 "tokens must be a list of words, got a str", id="train_word2vec-string"),
    pytest.param(lambda t: build_vocab("the cat"), TypeError, "tokens must be a list of words",
                 id="build_vocab-string"),
    pytest.param(lambda t: Word2Vec(lr=-0.1), ValueError, "lr=-0.1", id="Word2Vec-negative-lr"),
    pytest.param(lambda t: Word2Vec(min_count=0), ValueError, "min_count=0",
                 id="Word2Vec-min-count-0"),
    pytest.param(lambda t: train_word2vec(None, Word2Vec(dim=4), ids=np.array([0, 3]),
                                          words=["a", "b"], counts=np.array([1, 1])),
                 ValueError, r"ids must lie in \[0, len\(words\)=2\), got min 0 max 3",
                 id="train_word2vec-ids-out-of-range"),
    pytest.param(lambda t: train_word2vec(["lonely"], Word2Vec(dim=4, sample=0)), ValueError,
                 "no training examples from 1 tokens", id="train_word2vec-one-word"),
    pytest.param(lambda t: train_word2vec(WORDS, {"dim": 4}), TypeError,
                 "config must be a Word2Vec", id="train_word2vec-config-dict"),
    pytest.param(lambda t: nearest(np.eye(3), np.ones(4)), ValueError,
                 r"query.shape=\(4,\)", id="nearest-query-size"),
    pytest.param(lambda t: analogy(np.eye(3), 0, 1, 5), ValueError,
                 r"c=5 must be a word id in \[0, 3\)", id="analogy-id-out-of-range"),
    pytest.param(lambda t: w2v_model().analogy("a", "b", "zebra"), KeyError, "zebra",
                 id="Word2VecModel.analogy-unknown-word"),
    pytest.param(lambda t: load_word2vec_text(write(t / "vec.bin", b"\xff\xfe\x00\x01")),
                 ValueError, r"vec.bin is not a utf-8 text file",
                 id="load_word2vec_text-binary"),
    pytest.param(lambda t: load_word2vec_text(write(t / "vec.txt", "three 2\n")), ValueError,
                 r"vec.txt: first line", id="load_word2vec_text-bad-header"),
    pytest.param(lambda t: load_word2vec_text(write(t / "vec.txt", "1 2\na 0.1 x\n")),
                 ValueError, r"vec.txt:2: the values of 'a' are not all numbers",
                 id="load_word2vec_text-not-numbers"),
    pytest.param(lambda t: skipgram_pairs(IDS, 0, np.random.default_rng(0)), ValueError,
                 "window=0", id="skipgram_pairs-window-0"),
    pytest.param(lambda t: cbow_examples(IDS.astype(float), 2, np.random.default_rng(0)),
                 ValueError, r"ids \(shape \(4,\), dtype float64\)", id="cbow_examples-float-ids"),
    pytest.param(lambda t: skipgram_loss({"in": jnp.zeros((4, 3)), "out": jnp.zeros((4, 3))},
                                         IDS, IDS[:3], jnp.zeros((4, 2), jnp.int32)),
                 ValueError, r"targets=\(3,\)", id="skipgram_loss-targets-batch"),
    pytest.param(lambda t: init_params(KEY, 0, 4), ValueError, "vocab_size=0",
                 id="init_params-empty-vocabulary"),
    pytest.param(lambda t: noise_distribution(np.zeros(3)), ValueError, "counts",
                 id="noise_distribution-zero-counts"),
    pytest.param(lambda t: save_word2vec_text(t / "v.txt", "ab", np.eye(2)), TypeError,
                 "words must be a list of words", id="save_word2vec_text-string-words"),
    # ---------------------------------------------------------------- music .mat files
    pytest.param(lambda t: corrupt_music(t, b""), ValueError,
                 r"JSB_Chorales.mat is not a readable MATLAB .mat file",
                 id="load_music-empty-file"),
    pytest.param(truncated_mat, ValueError, r"JSB_Chorales.mat is not a readable MATLAB",
                 id="load_music-truncated-file"),
    pytest.param(lambda t: corrupt_music(t, "a,b,c\n1,2,3\n" * 20), ValueError,
                 r"JSB_Chorales.mat is not a readable MATLAB", id="load_music-plain-text"),
    pytest.param(lambda t: (music_file(t, traindata=cells(ROLL)), load_music("jsb", t)),
                 ValueError, r"JSB_Chorales.mat has no key 'validdata'",
                 id="load_music-missing-key"),
    pytest.param(lambda t: (music_file(t, **{**GOOD_MAT, "testdata": cells(ROLL[:, :87])}),
                            get_task("jsb", data_dir=t)), ValueError,
                 r"JSB_Chorales.mat: testdata\[0\].shape=\(5, 87\) must be \(T >= 2, 88\)",
                 id="get_task-jsb-87-keys"),
    pytest.param(lambda t: (music_file(t, **{**GOOD_MAT, "traindata": cells(ROLL + 2)}),
                            PolyphonicMusicTask("jsb", data_dir=t)), ValueError,
                 r"traindata\[0\] must hold 0/1 piano-roll values, got 2",
                 id="PolyphonicMusicTask-not-binary"),
    pytest.param(lambda t: (music_file(t, **{**GOOD_MAT, "validdata": np.zeros((2, 88))}),
                            load_music("jsb", t)), ValueError,
                 r"validdata \(shape \(2, 88\), dtype float64\) must be a non-empty cell array",
                 id="load_music-not-a-cell-array"),
    # ---------------------------------------------------------------- text corpora, idx files
    pytest.param(lambda t: load_corpus(write(t / "empty.txt", "")), ValueError,
                 r"empty.txt holds no tokens", id="load_corpus-empty-file"),
    pytest.param(lambda t: load_corpus(write(t / "tiny.txt", "abcdefghij")), ValueError,
                 r"tiny.txt: the valid split .* split=\(0.9, 0.05, 0.05\)",
                 id="load_corpus-split-too-small"),
    pytest.param(lambda t: load_corpus(write(t / "blob.txt", b"\x00\xff\xfe" * 40)), ValueError,
                 r"blob.txt is not a UTF-8 text file", id="load_corpus-binary-file"),
    pytest.param(lambda t: load_corpus(write(t / "c.txt", "abc" * 50), split=(0.5, 0.5)),
                 ValueError, r"split=\(0.5, 0.5\) must be three", id="load_corpus-bad-split"),
    pytest.param(lambda t: load_corpus(3), TypeError, "name must be a corpus name",
                 id="load_corpus-int-name"),
    pytest.param(lambda t: load_vocabulary(write(t / "vocab.json", json.dumps({"level": "char",
                                                                             "tokens": [1]}))),
                 ValueError, r"vocab.json is not a vocabulary file",
                 id="load_vocabulary-non-str-tokens"),
    pytest.param(lambda t: ptb_files(t), ValueError,
                 r"ptb.train.txt: the train split holds 0 tokens", id="load_ptb-empty-train"),
    pytest.param(lambda t: read_idx(write(t / "a.idx", b"")), ValueError,
                 r"a.idx is not an idx file: an empty file", id="read_idx-empty"),
    pytest.param(lambda t: read_idx(write(t / "a.gz", gzip.compress(idx_bytes())[:-6])),
                 ValueError, r"a.gz is a corrupt or truncated gzip file",
                 id="read_idx-truncated-gzip"),
    pytest.param(lambda t: read_idx(write(t / "a.idx", idx_bytes()[:-2])), ValueError,
                 r"a.idx: header says shape \(2, 3\)", id="read_idx-truncated-data"),
    pytest.param(lambda t: read_idx(write(t / "a.idx", bytes([0, 0, 8, 3, 0, 0]))), ValueError,
                 r"a.idx: truncated idx header", id="read_idx-truncated-header"),
    pytest.param(lambda t: read_idx(write(t / "a.idx", "hello world\n")), ValueError,
                 r"a.idx is not an idx file: header bytes", id="read_idx-text-file"),
    # ---------------------------------------------------------------- tasks, batches, vocab
    pytest.param(lambda t: get_task(["adding"]), TypeError, "name must be a task name",
                 id="get_task-list-name"),
    pytest.param(lambda t: get_task("adding", seq_len=1), ValueError, "seq_len=1",
                 id="get_task-adding-seq-len-1"),
    pytest.param(lambda t: get_task("adding", nosuch=1), TypeError,
                 r"task 'adding' takes no argument 'nosuch'; its arguments besides data_dir "
                 r"and seq_len: eval_size, markers", id="get_task-adding-unknown-argument"),
    pytest.param(lambda t: get_task("ptb-char", data_dir=t, eval_size=3), TypeError,
                 r"task 'ptb-char' takes no argument 'eval_size'.*: none",
                 id="get_task-ptb-no-arguments"),
    pytest.param(lambda t: get_task("digits", permuted=True), TypeError,
                 r"takes no argument 'permuted'", id="get_task-digits-fixed-argument"),
    pytest.param(lambda t: AddingTask(5).train_batch(0, 0), ValueError, "batch_size=0",
                 id="AddingTask.train_batch-batch-size-0"),
    pytest.param(lambda t: CopyMemoryTask(5).train_batch(-1, 2), ValueError, "step=-1",
                 id="CopyMemoryTask.train_batch-negative-step"),
    pytest.param(lambda t: CopyTask(max_len=3).train_batch(0, 2, seed=0.5), ValueError,
                 "seed=0.5", id="CopyTask.train_batch-float-seed"),
    pytest.param(lambda t: CopyTask(min_len=4, max_len=3), ValueError,
                 "min_len=4 must be <= max_len=3", id="CopyTask-min-len-above-max-len"),
    pytest.param(lambda t: pad_batch([np.ones(2, int), np.ones(3, int)], pad_value=0.5),
                 ValueError, r"pad_value=0.5 cannot be stored exactly in the arrays' dtype int",
                 id="pad_batch-fractional-pad-for-ints"),
    pytest.param(lambda t: pad_batch([np.ones((2, 3)), np.ones((2, 4))]), ValueError,
                 r"arrays\[1\].shape=\(2, 4\)", id="pad_batch-trailing-shapes"),
    pytest.param(lambda t: pad_batch("abc"), TypeError, "arrays must be a sequence",
                 id="pad_batch-string"),
    pytest.param(lambda t: Vocabulary("the cat", "word"), TypeError,
                 "tokens must be a sequence of str tokens, got a str",
                 id="Vocabulary-string-tokens"),
    pytest.param(lambda t: Vocabulary(["a", 1], "word"), TypeError, "tokens must all be str",
                 id="Vocabulary-int-token"),
    pytest.param(lambda t: Vocabulary(list("ab"), "char").decode([0, -1]), ValueError,
                 r"ids must lie in \[0, 2\) .*min -1", id="Vocabulary.decode-negative-id"),
    pytest.param(lambda t: Vocabulary(list("ab"), "char").encode(["a"]), TypeError,
                 "text must be a str", id="Vocabulary.encode-list"),
    pytest.param(lambda t: lm_task({k: np.array([0, 1, 5, 1, 0]) for k in
                                    ("train", "valid", "test")}), ValueError,
                 r"data\['train'\] ids must lie in \[0, 3\).*max 5",
                 id="LanguageModelTask-ids-out-of-range"),
    pytest.param(lambda t: lm_task(seq_len=0), ValueError, "seq_len=0",
                 id="LanguageModelTask-seq-len-0"),
    pytest.param(lambda t: ImageSequenceTask("img", image_splits([0, 1, 2, 10]), max_value=1.0),
                 ValueError, r"labels must lie in \[0, num_classes=10\), got min 0 max 10",
                 id="ImageSequenceTask-label-out-of-range"),
    pytest.param(lambda t: ImageSequenceTask("img", without(image_splits([0] * 4), "valid"),
                                             max_value=1.0), ValueError,
                 "splits must be a dict with keys", id="ImageSequenceTask-missing-split"),
    pytest.param(lambda t: AddingTask(4).loss_terms(jnp.zeros((2, 4, 1), jnp.int32),
                                                     AddingTask(4).train_batch(0, 2)),
                 TypeError, "outputs.dtype=int32", id="AddingTask.loss_terms-int-outputs"),
    pytest.param(lambda t: AddingTask(4).loss_terms(jnp.zeros((2, 4, 2)),
                                                     AddingTask(4).train_batch(0, 2)),
                 ValueError, r"outputs.shape=\(2, 4, 2\)", id="AddingTask.loss_terms-shape"),
    pytest.param(lambda t: AddingTask(4).loss_terms(jnp.zeros((2, 4, 1)), (X, X, LEN)),
                 TypeError, "batch must be a seqjax.data.Batch",
                 id="AddingTask.loss_terms-tuple-batch"),
    pytest.param(lambda t: list(bucket_batches([IDS, IDS], np.array([0, 1]), 0)), ValueError,
                 "batch_size=0", id="bucket_batches-batch-size-0"),
    pytest.param(lambda t: list(bucket_batches([IDS, IDS], np.array([0]), 2)), ValueError,
                 r"labels \(shape \(1,\)", id="bucket_batches-labels-count"),
    pytest.param(lambda t: cv_folds(5, 6), ValueError, r"k=6 must be in \[2, n=5\]",
                 id="cv_folds-k-above-n"),
    pytest.param(lambda t: mr_files(t), ValueError, r"rt-polarity.pos holds no sentence",
                 id="load_mr-empty-file"),
    pytest.param(lambda t: translation.pad_batch([[1, 2]], length=-1), ValueError,
                 "length=-1", id="translation.pad_batch-negative-length"),
    pytest.param(lambda t: parallel().train_batch(0, 0), ValueError, "batch_size=0",
                 id="ParallelData.train_batch-batch-size-0"),
    pytest.param(lambda t: list(parallel().batches("dev", 2)), ValueError, "split='dev'",
                 id="ParallelData.batches-unknown-split"),
    pytest.param(lambda t: load_tsv(write(t / "p.tsv", b"a\tb\n\xff\xfe\tc\n")), ValueError,
                 r"p.tsv is not a UTF-8 text file", id="load_tsv-not-utf8"),
    pytest.param(lambda t: load_tsv(write(t / "p.tsv", "a\tb\n"), columns=(0,)), ValueError,
                 r"columns=\(0,\)", id="load_tsv-one-column"),
    pytest.param(lambda t: make_translation_data(7), TypeError, "task must be a name",
                 id="make_translation_data-int-task"),
    pytest.param(lambda t: split_pairs([("a", "b")], fractions=0.1), ValueError,
                 "fractions=0.1", id="split_pairs-scalar-fractions"),
    # ---------------------------------------------------------------- analysis
    pytest.param(lambda t: model_states(SM, params(SequenceModel("gru", 3, 2, 5)), X),
                 ValueError, r"params\['encoder'\]", id="model_states-params-other-model"),
    pytest.param(lambda t: model_states(LM, params(LM), TOK), TypeError,
                 "model must be a seqjax.models.SequenceModel", id="model_states-language-model"),
    pytest.param(lambda t: model_gradient_flow(SM_TOK, params(SM_TOK), TOK.astype(np.float32),
                                               jnp.sum), TypeError, "inputs.dtype=float32",
                 id="model_gradient_flow-float-token-ids"),
    pytest.param(lambda t: model_gradient_flow(SM_TOK, params(SM_TOK), TOK * 5, jnp.sum),
                 ValueError, r"inputs must lie in \[0, vocab_size=5\)",
                 id="model_gradient_flow-token-id-too-large"),
    pytest.param(lambda t: model_gradient_flow(SM, params(SM), X, "sum"), TypeError,
                 "loss_fn must be callable", id="model_gradient_flow-loss-not-callable"),
    pytest.param(lambda t: cell_gradient_flow(CELL, params(GRU(3, 5)), X), ValueError,
                 r"params\['w_\w+'\]", id="cell_gradient_flow-params-other-cell"),
    pytest.param(lambda t: cell_states(CELL, CELL_P, X, jnp.zeros((3, 4))), ValueError,
                 r"initial_carry shapes \[\(3, 4\)\] must be \[\(2, 4\)\]",
                 id="cell_states-initial-carry-batch"),
    pytest.param(lambda t: gate_trajectory(CELL, CELL_P, X.astype(np.int32)), TypeError,
                 "xs.dtype=int32", id="gate_trajectory-int-inputs"),
    pytest.param(lambda t: gate_statistics([np.zeros((1, 2, 3))]), TypeError,
                 "gates must be a dict", id="gate_statistics-list"),
    pytest.param(lambda t: singular_values(np.ones(3)), ValueError, r"w.shape=\(3,\)",
                 id="singular_values-vector"),
    pytest.param(lambda t: spectral_radius(np.ones((2, 3))), ValueError, r"w.shape=\(2, 3\)",
                 id="spectral_radius-not-square"),
    pytest.param(lambda t: recurrent_blocks(CELL, without(CELL_P, "w_h")), ValueError,
                 "recurrent weight 'w_h'", id="recurrent_blocks-no-w_h"),
    pytest.param(lambda t: step_jacobian(CELL, CELL_P, jnp.zeros((2, 4)), jnp.zeros((2, 5))),
                 ValueError, r"x_t.shape=\(2, 5\) must be \[B, 3\]",
                 id="step_jacobian-input-size"),
    pytest.param(lambda t: step_jacobian(LSTM(3, 4), params(LSTM(3, 4)), jnp.zeros((2, 4)),
                                         jnp.zeros((2, 3))), ValueError, "carry shapes",
                 id="step_jacobian-lstm-carry-not-a-pair"),
    pytest.param(lambda t: hidden_states(SM_TOK, params(SM_TOK), np.array([0, 5])), ValueError,
                 r"tokens must lie in \[0, vocab_size=5\), got min 0 max 5",
                 id="hidden_states-token-id-too-large"),
    pytest.param(lambda t: hidden_states(SM_TOK, params(SM_TOK), np.array([0.0, 1.0])),
                 TypeError, "tokens.dtype=float64", id="hidden_states-float-tokens"),
    pytest.param(lambda t: hidden_states(SM_TOK, params(SM_TOK), IDS[:2], layer=3), ValueError,
                 "layer=3", id="hidden_states-layer-out-of-range"),
    pytest.param(lambda t: unit_correlations(np.ones((4, 2)), np.ones(3)), ValueError,
                 r"feature.shape=\(3,\)", id="unit_correlations-feature-length"),
    pytest.param(lambda t: char_features(["a", "b"]), TypeError, "text must be a str",
                 id="char_features-list"),
    pytest.param(lambda t: html_text("abc", [1.0, 2.0]), ValueError, r"values.shape=\(2,\)",
                 id="html_text-values-length"),
    pytest.param(lambda t: grad_norm_history("history.jsonl"), TypeError,
                 "history must be a list of metric rows", id="grad_norm_history-path"),
    pytest.param(lambda t: track_grad_norms(lambda *a: 0.0, {}, None, lambda i: None, -1),
                 ValueError, "num_steps=-1", id="track_grad_norms-negative-steps"),
    pytest.param(lambda t: by_distance(np.ones(3)), ValueError, r"norms.shape=\(3,\)",
                 id="by_distance-vector"),
    pytest.param(lambda t: geometric_rate(np.ones((2, 3))), ValueError, r"curve.shape=\(2, 3\)",
                 id="geometric_rate-matrix"),
    pytest.param(lambda t: clipped_norm([1.0], -1.0), ValueError, "clip_norm=-1.0",
                 id="clipped_norm-negative"),
]


@pytest.mark.parametrize("call, exc, match", CASES)
def test_bad_input(call, exc, match, tmp_path):
    with pytest.raises(exc, match=match):
        call(tmp_path)


def test_sweep_size_and_coverage():
    assert len(CASES) >= 60
    import seqjax
    import seqjax.analysis
    import seqjax.data
    import seqjax.models
    import seqjax.models.classify
    import seqjax.models.lm
    import seqjax.models.sample
    import seqjax.models.word2vec
    import seqjax.train

    exported = set(seqjax.__all__)
    for mod in (seqjax.analysis, seqjax.models.classify, seqjax.data, seqjax.models.word2vec,
                seqjax.models.lm, seqjax.models, seqjax.models.sample, seqjax.train):
        exported |= set(mod.__all__)
    assert COVERED <= exported, sorted(COVERED - exported)


# ------------------------------------------------------------------------------------------
# Values: padding never changes a loss or a gradient (item 6)
# ------------------------------------------------------------------------------------------


def _terms_and_grad(task):
    """One jitted ``(outputs, batch) -> (loss terms, d loss / d outputs)`` per task."""
    def loss(o, batch):
        terms = task.loss_terms(o, batch)
        return terms["loss"], terms

    return jax.jit(jax.grad(loss, has_aux=True))


def _padded_batches():
    """``(task, batch, pad [B, T] bool)`` for every kind of task loss, each with padding."""
    rng = np.random.default_rng(0)
    out = []
    # classification_terms at every step (copy memory, LMs)
    copy = CopyMemoryTask(3)
    b = copy.train_batch(0, 3)
    lengths = np.array([b.num_steps, 7, 0], np.int32)
    out.append((copy, Batch(b.inputs, b.targets, lengths)))
    lm = lm_task()
    b = next(lm.eval_batches("valid", 4))
    out.append((lm, Batch(b.inputs, b.targets, np.array([4, 2], np.int32))))
    # regression at the last valid step, with a row of length 0
    adding = AddingTask(6)
    b = adding.train_batch(0, 3)
    out.append((adding, Batch(b.inputs, b.targets, np.array([6, 2, 0], np.int32))))
    # classification at the last valid step
    img = ImageSequenceTask("img", image_splits([0, 1, 2, 3]), max_value=1.0)
    b = img.train_batch(0, 3)
    out.append((img, Batch(b.inputs, b.targets, np.array([6, 3, 0], np.int32))))
    # sigmoid cross-entropy over scored steps (NTM tasks: eval batches are padded)
    ntm = CopyTask(bits=3, min_len=1, max_len=4, eval_size=6)
    out.append((ntm, next(ntm.eval_batches("valid", 6))))
    # binary cross-entropy per frame (music), padded to the longest sequence
    rolls = [(rng.random((n, 88)) < 0.2).astype(np.uint8) for n in (7, 4, 2)]
    music = object.__new__(PolyphonicMusicTask)
    music.output_size, music.pad_multiple = 88, 4
    out.append((music, music._batch(rolls)))
    return out


@pytest.mark.parametrize("task, batch", _padded_batches(),
                         ids=["copy-memory", "language-model", "adding", "image", "ntm-copy",
                              "music"])
def test_nan_padding_changes_no_loss_and_no_gradient(task, batch):
    b, t = batch.inputs.shape[:2]
    pad = np.arange(t)[None, :] >= batch.lengths[:, None]
    assert pad.any()
    outputs = np.random.default_rng(1).standard_normal((b, t, task.output_size))
    with_zeros = np.where(pad[..., None], 0.0, outputs).astype(np.float32)
    fn = _terms_and_grad(task)
    grad0, ref = fn(with_zeros, batch)
    for poison in (np.nan, np.inf, -np.inf):
        poisoned = np.where(pad[..., None], poison, outputs).astype(np.float32)
        grad, terms = fn(poisoned, batch)
        np.testing.assert_array_equal(grad, grad0)
        assert np.isfinite(terms["loss"]) and np.isfinite(grad).all()
        for k in ref:
            np.testing.assert_array_equal(terms[k], ref[k], err_msg=k)
    # and the padded positions get no gradient at all
    assert not np.asarray(grad0)[pad].any()


def test_sequence_model_nan_padding_changes_no_output_and_no_gradient():
    p = real_params(SM)
    x = np.random.default_rng(2).standard_normal(X.shape).astype(np.float32)
    pad = np.arange(5)[None, :] >= LEN[:, None]

    def loss(p, xs):
        out = SM.apply(p, xs, LEN)
        return jnp.sum(jnp.where(~pad[..., None], out, 0.0) ** 2), out

    fn = jax.jit(jax.value_and_grad(loss, has_aux=True, argnums=(0, 1)))
    (l0, out0), g0 = fn(p, jnp.where(pad[..., None], 0.0, x))
    (l1, out1), g1 = fn(p, jnp.where(pad[..., None], jnp.nan, x))
    np.testing.assert_array_equal(l0, l1)
    np.testing.assert_array_equal(np.asarray(out0)[~pad], np.asarray(out1)[~pad])
    jax.tree.map(np.testing.assert_array_equal, g0, g1)
    assert not np.asarray(g1[1])[pad].any()


def test_classifier_padding_may_hold_any_id():
    p = real_params(CLF)
    tokens = np.array([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]], np.int32)
    fwd = CLF_FWD
    ref = fwd(p, tokens, LEN)
    odd = tokens.copy()
    odd[1, 3:] = [-1, 99]  # past seq_lengths[1] = 3: padding, not checked, not read
    CLF.apply(p, odd, LEN)  # eager: the range check skips padding
    np.testing.assert_array_equal(fwd(p, odd, LEN), ref)


def test_out_of_range_ids_under_jit_are_nan_not_another_row():
    p = real_params(LM)
    fwd = jax.jit(lambda p, x: LM.apply(p, x)[0])
    for bad in (7, 100, -1):
        tokens = np.array([[1, 2, bad]], np.int32)
        logits = np.asarray(fwd(p, tokens))
        assert np.isfinite(logits[0, :2]).all()
        assert np.isnan(logits[0, 2]).all(), bad
    logits = CLF_FWD(real_params(CLF), np.array([[1, 9, 1]]), np.array([3]))
    assert np.isnan(np.asarray(logits)).all()
