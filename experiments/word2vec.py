"""Train word2vec on PTB (or any whitespace-tokenised text); print neighbours and analogies.

    python experiments/word2vec.py --mode skipgram --epochs 10

Writes ``<out>/vectors.txt`` (word2vec text format) and ``<out>/results.json``.
"""

from __future__ import annotations

import argparse
import json
import time

from seqjax.cli import (
    UserError,
    check_dir,
    check_file,
    check_output_dir,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run_main,
)
from seqjax.data import resolve_data_dir
from seqjax.models.word2vec import Word2Vec, save_word2vec_text
from seqjax.train.word2vec import train_word2vec

PROBES = ["money", "company", "stock", "president", "week", "bank", "buy", "good", "market",
          "japan", "computer", "he"]

# a : b :: c : d, written from the PTB vocabulary (pairs whose four words are all in it count)
ANALOGIES = [
    ("company", "companies", "bank", "banks"), ("year", "years", "month", "months"),
    ("share", "shares", "price", "prices"), ("buy", "bought", "sell", "sold"),
    ("rise", "rose", "fall", "fell"), ("he", "his", "she", "her"),
    ("man", "men", "woman", "women"), ("big", "bigger", "small", "smaller"),
    ("monday", "tuesday", "wednesday", "thursday"), ("up", "down", "high", "low"),
    ("increase", "increased", "decline", "declined"), ("million", "millions", "billion",
                                                         "billions"),
    ("japan", "japanese", "britain", "british"), ("stock", "stocks", "bond", "bonds"),
    ("week", "weeks", "day", "days"), ("buy", "buying", "sell", "selling"),
    ("good", "better", "bad", "worse"), ("say", "said", "make", "made"),
    ("january", "february", "march", "april"), ("first", "second", "third", "fourth"),
    ("he", "him", "they", "them"), ("france", "french", "germany", "german"),
    ("investor", "investors", "analyst", "analysts"), ("go", "went", "take", "took"),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data-dir", default=None,
                   help="data directory (default: $SEQJAX_DATA, else the repository's data/)")
    p.add_argument("--text", default=None, help="any text file instead of PTB train")
    p.add_argument("--mode", default="skipgram", choices=["skipgram", "cbow"])
    p.add_argument("--dim", type=positive_int, default=100)
    p.add_argument("--window", type=positive_int, default=5)
    p.add_argument("--negative", type=positive_int, default=5)
    p.add_argument("--sample", type=non_negative_float, default=1e-4)
    p.add_argument("--epochs", type=positive_int, default=10)
    p.add_argument("--lr", type=positive_float, default=None,
                   help="default 0.025 sg / 0.05 cbow")
    p.add_argument("--batch-size", type=positive_int, default=512)
    p.add_argument("--min-count", type=positive_int, default=1)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--out", default=f"results/word2vec/{time.strftime('%Y%m%d-%H%M%S')}")
    args = p.parse_args(argv)

    out = check_output_dir("--out", args.out)
    if args.text:
        path = check_file("--text", args.text)
    else:
        if args.data_dir is not None:
            check_dir("--data-dir", args.data_dir)
        root = resolve_data_dir(args.data_dir)
        if root is None:
            raise UserError("no data directory for PTB: pass --data-dir, set $SEQJAX_DATA, or "
                            "give --text")
        path = root / "ptb" / "ptb.train.txt"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (PTB: Mikolov's simple-examples, "
                                    "ptb.train.txt); pass --data-dir or --text")
    tokens = path.read_text(encoding="utf-8", errors="replace").split()
    if not tokens:
        raise UserError(f"{'--text ' if args.text else ''}{path} holds no words")
    lr = args.lr if args.lr is not None else (0.025 if args.mode == "skipgram" else 0.05)
    cfg = Word2Vec(dim=args.dim, mode=args.mode, window=args.window, negative=args.negative,
                   sample=args.sample, min_count=args.min_count, lr=lr, epochs=args.epochs,
                   batch_size=args.batch_size)
    print(f"{len(tokens)} tokens from {path}; {cfg}", flush=True)
    model = train_word2vec(tokens, cfg, seed=args.seed, verbose=True)
    idx = model.index
    neighbours = {}
    for w in PROBES:
        if w in idx:
            neighbours[w] = model.nearest(w, 8)
            print(f"{w:>10}: " + ", ".join(f"{n} ({s:.2f})" for n, s in neighbours[w]))
    usable = [q for q in ANALOGIES if all(w in idx for w in q)]
    correct = 0
    rows = []
    for a, b, c, d in usable:
        got = model.analogy(a, b, c, 1)[0][0]
        correct += got == d
        rows.append((a, b, c, d, got))
        print(f"{a}:{b} :: {c}:{d}  -> {got}{'  ok' if got == d else ''}")
    acc = correct / max(len(usable), 1)
    print(f"analogy accuracy {correct}/{len(usable)} = {acc:.3f} "
          f"({len(ANALOGIES) - len(usable)} questions skipped: OOV)")
    out.mkdir(parents=True, exist_ok=True)
    save_word2vec_text(out / "vectors.txt", model.words, model.vectors)
    (out / "results.json").write_text(json.dumps({
        "args": vars(args), "history": model.history, "neighbours": neighbours,
        "analogies": rows, "analogy_accuracy": acc}, indent=1))
    return model


if __name__ == "__main__":
    run_main(main)
