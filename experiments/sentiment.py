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

from seqjax.classify import Classifier, evaluate, make_classifier_step
from seqjax.data import sentiment as mr
from seqjax.embeddings import Word2Vec, train_word2vec

MODELS = {
    "bilstm": dict(kind="lstm", bidirectional=True, pool="final"),
    "bilstm_max": dict(kind="lstm", bidirectional=True, pool="max"),
    "conv_bilstm": dict(kind="lstm", bidirectional=True, pool="max", conv_channels=100),
    "gru": dict(kind="gru", bidirectional=False, pool="final"),
    "tcn": dict(kind="tcn", bidirectional=False, pool="max", num_layers=3),
}


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


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=None,
                   help="data directory (default: $SEQJAX_DATA, else the repository's data/)")
    p.add_argument("--models", default="bilstm")
    p.add_argument("--embeddings", default="rand")
    p.add_argument("--folds", type=int, default=10, help="folds to run (of 10)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--embed-dim", type=int, default=128)
    p.add_argument("--hidden", type=int, default=100)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--w2v-epochs", type=int, default=5)
    p.add_argument("--out", default=f"results/sentiment/{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args(argv)

    data = mr.load_mr(args.data_dir)
    folds = mr.cv_folds(len(data.labels), 10, seed=0)[: args.folds]
    vocab = mr.build_vocab(data.sentences)  # all sentences: test words get (untrained) rows
    ids = mr.encode(data.sentences, vocab)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results, curves = {}, {}
    for emb_name in args.embeddings.split(","):
        emb = (w2v_table(vocab, data, args.data_dir, args.embed_dim, args.w2v_epochs, 0)
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
    main()
