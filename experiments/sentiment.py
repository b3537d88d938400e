"""MR sentence polarity with many-to-one classifiers, k-fold cross-validation.

    python experiments/sentiment.py --models bilstm --embeddings rand,w2v --folds 10 --epochs 4

Prints a ``model x embeddings`` table of mean +- std test accuracy over the folds and writes
``<out>/results.json``, ``table.md`` and ``curves.png`` (train loss per epoch, fold 0).
``w2v`` embeddings are skip-gram vectors trained here on MR's own sentences plus PTB (fine-tuned).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
import optax

from seqjax.cli import (
    UserError,
    check_dir,
    check_output_dir,
    fraction,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.data import resolve_data_dir
from seqjax.data import sentiment as mr
from seqjax.models.classify import Classifier, evaluate
from seqjax.models.word2vec import Word2Vec
from seqjax.train import make_classifier_step
from seqjax.train.word2vec import train_word2vec

MODELS = {
    "bilstm": dict(arch="lstm", bidirectional=True, pool="final"),
    "bilstm_max": dict(arch="lstm", bidirectional=True, pool="max"),
    "conv_bilstm": dict(arch="lstm", bidirectional=True, pool="max", conv_channels=100),
    "gru": dict(arch="gru", bidirectional=False, pool="final"),
    "tcn": dict(arch="tcn", bidirectional=False, pool="max", num_layers=3),
}
EMBEDDINGS = ("rand", "w2v")
NUM_FOLDS = 10


def w2v_table(vocab, data, data_dir, dim, epochs, seed):
    toks = [w for s in data.sentences for w in s]
    ptb = Path(data_dir) / "ptb" / "ptb.train.txt"
    if ptb.is_file():
        toks += ptb.read_text().split()
    model = train_word2vec(toks, Word2Vec(dim=dim, epochs=epochs, sample=1e-4, batch_size=512),
                           seed=seed)
    idx = model.index
    rng = np.random.default_rng(seed)
    table = 0.1 * rng.standard_normal((len(vocab), dim)).astype(np.float32)
    hit = 0
    for i, w in enumerate(vocab):
        if w in idx:
            v = model.vectors[idx[w]]
            table[i] = v / (np.linalg.norm(v) + 1e-8) * 0.1 * np.sqrt(dim)  # match rand scale
            hit += 1
    print(f"word2vec: {len(model.words)} words, covers {hit}/{len(vocab)} MR words", flush=True)
    return table


def run_fold(cfg, emb, ids, labels, tr, te, args, fold):
    params = cfg.init(jax.random.key(fold), emb)
    steps_per_epoch = -(-len(tr) // args.batch_size)
    opt = optax.chain(optax.clip_by_global_norm(5.0),
                      optax.adam(optax.cosine_decay_schedule(args.lr,
                                                             steps_per_epoch * args.epochs)))
    opt_state = opt.init(params)
    step = make_classifier_step(cfg, opt)
    key = jax.random.key(1000 + fold)
    curve = []
    tr_ids = [ids[i] for i in tr]
    for epoch in range(args.epochs):
        losses = []
        for tokens, lengths, labs in mr.bucket_batches(tr_ids, labels[tr], args.batch_size,
                                                       shuffle=True, seed=epoch + 100 * fold,
                                                       max_len=args.max_len):
            if (labs < 0).any():
                continue
            key, sub = jax.random.split(key)
            params, opt_state, loss, _ = step(params, opt_state, tokens, lengths, labs, sub)
            losses.append(float(loss))
        curve.append(float(np.mean(losses)))
    acc = evaluate(cfg, params, mr.bucket_batches([ids[i] for i in te], labels[te],
                                                  args.batch_size, max_len=args.max_len))
    return acc, curve


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=None,
                   help="data directory (default: $SEQJAX_DATA, else the repository's data/)")
    p.add_argument("--models", default="bilstm", help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--embeddings", default="rand",
                   help=f"comma-separated, from {', '.join(EMBEDDINGS)}")
    p.add_argument("--folds", type=positive_int, default=NUM_FOLDS,
                   help=f"folds to run (of {NUM_FOLDS})")
    p.add_argument("--epochs", type=positive_int, default=4)
    p.add_argument("--batch-size", type=positive_int, default=50)
    p.add_argument("--lr", type=positive_float, default=2e-3)
    p.add_argument("--embed-dim", type=positive_int, default=128)
    p.add_argument("--hidden", type=positive_int, default=100)
    p.add_argument("--dropout", type=fraction, default=0.5)
    p.add_argument("--max-len", type=positive_int, default=64)
    p.add_argument("--w2v-epochs", type=positive_int, default=5)
    p.add_argument("--out", default=f"results/sentiment/{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args(argv)
    for flag, value, choices in (("--models", args.models, MODELS),
                                 ("--embeddings", args.embeddings, EMBEDDINGS)):
        names = [n.strip() for n in value.split(",") if n.strip()]
        bad = [n for n in names if n not in choices]
        if bad or not names:
            p.error(f"{flag} {value!r}: unknown {bad}; choose from {', '.join(choices)}")
        setattr(args, flag[2:], ",".join(dict.fromkeys(names)))
    if args.folds > NUM_FOLDS:
        p.error(f"--folds {args.folds}: at most {NUM_FOLDS} (the folds of the "
                f"{NUM_FOLDS}-fold cross-validation)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.data_dir is not None:
        check_dir("--data-dir", args.data_dir)
    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        raise UserError("no data directory: pass --data-dir or set $SEQJAX_DATA")
    out = check_output_dir("--out", args.out)

    data = mr.load_mr(data_dir)
    folds = mr.cv_folds(len(data.labels), NUM_FOLDS, seed=0)[: args.folds]
    vocab = mr.build_vocab(data.sentences)  # all sentences: test words get (untrained) rows
    ids = mr.encode(data.sentences, vocab)
    out.mkdir(parents=True, exist_ok=True)
    results, curves = {}, {}
    for emb_name in args.embeddings.split(","):
        emb = (w2v_table(vocab, data, data_dir, args.embed_dim, args.w2v_epochs, 0)
               if emb_name == "w2v" else None)
        for model_name in args.models.split(","):
            cfg = Classifier(vocab_size=len(vocab), embed_dim=args.embed_dim,
                             hidden_size=args.hidden, dropout=args.dropout, **MODELS[model_name])
            accs = []
            for f, (tr, te) in enumerate(folds):
                t0 = time.perf_counter()
                acc, curve = run_fold(cfg, emb, ids, data.labels, tr, te, args, f)
                accs.append(acc)
                if f == 0:
                    curves[f"{model_name}/{emb_name}"] = curve
                print(f"{model_name}/{emb_name} fold {f}: acc {acc:.4f} "
                      f"({time.perf_counter() - t0:.0f}s) losses {np.round(curve, 3)}", flush=True)
            results[f"{model_name}/{emb_name}"] = {"accs": accs, "mean": float(np.mean(accs)),
                                                  "std": float(np.std(accs))}
    lines = ["| model | embeddings | folds | accuracy (mean ± std) |", "|---|---|---|---|"]
    for k, r in results.items():
        m, e = k.split("/")
        lines.append(f"| {m} | {e} | {len(r['accs'])} | {100 * r['mean']:.2f} ± "
                     f"{100 * r['std']:.2f} |")
    table = "\n".join(lines)
    print(table)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results,
                                                  "curves": curves}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for k, c in curves.items():
            ax.plot(range(1, len(c) + 1), c, marker="o", label=k)
        ax.set_xlabel("epoch")
        ax.set_ylabel("train loss (fold 0)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "curves.png", dpi=120)
    except ImportError:
        pass
    return results


if __name__ == "__main__":
    run_main(main)
