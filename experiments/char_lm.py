"""Character-level language models: train with truncated BPTT (or the TCN's windows), sample.

    python experiments/char_lm.py --corpus tinyshakespeare --model lstm \\
        --steps 3000 --out runs/shakespeare-lstm
    python experiments/char_lm.py --out runs/shakespeare-lstm --resume        # after a crash
    python experiments/char_lm.py sample --run runs/shakespeare-lstm --prime "ROMEO:" \\
        --temperature 0.8 -n 500
    python experiments/char_lm.py evaluate --run runs/shakespeare-lstm --eval-batch-size 1
    python experiments/char_lm.py --corpus ptb-char --model tcn --preset paper --data-dir DIR \\
        --out runs/ptb-tcn

``--corpus`` is ``tinyshakespeare``, ``ptb-char`` or the path of any UTF-8 text file (split
90/5/5 %). ``--model`` is ``lstm``, ``gru``, ``rnn`` (tanh), ``tcn`` or another cell kind of
:mod:`seqjax.models.lm`. Recurrent models train with truncated BPTT: ``--batch-size`` parallel
streams,
chunks of ``--seq-len`` (k1) steps, the carry crossing chunk boundaries under stop_gradient and
reset at every epoch, optionally ``--k2`` < k1. The TCN trains on windows of ``--seq-len`` with
the loss on the last ``--seq-len - --history`` positions (Bai et al. 2018's validseqlen).

The run directory (``--out``) gets ``config.json``, ``metrics.jsonl``, ``checkpoints/`` (orbax,
with the carry), ``vocab.json``, ``model.json``, ``run.json`` (the arguments, for ``--resume``
and ``sample``), ``samples.txt`` (a sample at every evaluation), ``curves.png`` and
``results.json`` (validation and test bits per character over the whole splits, steps/s).
``--resume`` keeps the run's configuration: ``--steps`` may extend it, while a model, data or
optimiser flag that differs from the run's ``run.json`` is an error (start a new ``--out``).

Presets: ``quick`` (default; minutes on a laptop CPU) and ``paper`` (locuslab/TCN's char_cnn
settings for the TCN; a 2x600 LSTM for the recurrent models). The paper targets (char PTB test
bpc 1.36 LSTM / 1.31 TCN) need the paper's ~100 epochs, hours of accelerator time.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import jax

from seqjax.cli import (
    UserError,
    check_devices,
    check_dir,
    check_file,
    check_output_dir,
    fraction,
    non_negative_int,
    positive_float,
    positive_int,
    read_json,
    run_main,
)
from seqjax.data.corpus import (
    CORPORA,
    load_corpus,
    load_vocabulary,
    save_vocabulary,
    unigram_entropy_bits,
)
from seqjax.models import param_count
from seqjax.models.lm import LM_ARCHS, LanguageModel
from seqjax.models.sample import encode_prime, sample_text
from seqjax.train import (
    TokenStreams,
    TrainState,
    check_checkpoint,
    evaluate_stream,
    fit,
    initialize_distributed,
    latest_step,
    load_history,
    make_optimizer,
    make_tbptt_loss_fn,
    make_window_loss_fn,
    mesh_for,
    plot_curves,
    restore_checkpoint,
)

# ---------------------------------------------------------------------------------------------
# Presets: (level, preset, family) -> hyperparameters; family is "recurrent" or "tcn".

_BASE = dict(embed=64, hidden=256, layers=2, kernel=3, dropout_input=0.0, dropout_hidden=0.0,
             dropout_output=0.0, tie=False, seq_len=100, history=0, k2=None, batch_size=32,
             steps=2000, optimizer="adam", lr=2e-3, clip=1.0, schedule=None, decay_rate=0.1,
             decay_steps=None, eval_every=250, eval_tokens=50_000, eval_batch_size=10,
             sample_len=300)

PRESETS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("char", "quick", "recurrent"): dict(_BASE),
    ("char", "quick", "tcn"): dict(_BASE, embed=64, hidden=192, layers=4, kernel=3,
                                   dropout_hidden=0.05, seq_len=160, history=60, lr=2e-3,
                                   clip=0.5),
    # LSTM: 2 x 600 (the parameter budget of the paper's char-PTB comparison), Adam.
    ("char", "paper", "recurrent"): dict(_BASE, embed=120, hidden=600, layers=2,
                                         dropout_hidden=0.1, dropout_output=0.1, seq_len=150,
                                         batch_size=32, steps=100 * 5_000_000 // (32 * 150),
                                         lr=2e-3, clip=0.5, eval_every=2000, eval_tokens=None),
    # locuslab/TCN char_cnn defaults: emsize 100, nhid 450, levels 3, ksize 3, dropout 0.1,
    # emb_dropout 0.1, SGD lr 4, clip 0.15, seq_len 400, validseqlen 320, batch 32, 100 epochs.
    ("char", "paper", "tcn"): dict(_BASE, embed=100, hidden=450, layers=3, kernel=3,
                                   dropout_input=0.1, dropout_hidden=0.1, seq_len=400,
                                   history=80, batch_size=32,
                                   steps=100 * 5_000_000 // (32 * 320), optimizer="sgd", lr=4.0,
                                   clip=0.15, eval_every=2000, eval_tokens=None),
    ("word", "quick", "recurrent"): dict(_BASE, embed=200, hidden=200, layers=2, tie=True,
                                         dropout_input=0.2, dropout_hidden=0.2,
                                         dropout_output=0.2, seq_len=35, batch_size=20,
                                         steps=2000, lr=2e-3, clip=0.5, eval_tokens=30_000,
                                         sample_len=60),
    ("word", "quick", "tcn"): dict(_BASE, embed=200, hidden=200, layers=3, kernel=3, tie=True,
                                   dropout_input=0.1, dropout_hidden=0.2, seq_len=80,
                                   history=40, batch_size=16, steps=2000, lr=2e-3, clip=0.35,
                                   eval_tokens=30_000, sample_len=60),
    # Zaremba et al. (2014) "medium" (2 x 650, dropout 0.5, k1 = 35, B = 20, 39 epochs) with
    # tied embeddings and PyTorch word_language_model's SGD lr 20 / clip 0.25, lr / 4 every
    # 10 epochs after the first 20.
    ("word", "paper", "recurrent"): dict(_BASE, embed=650, hidden=650, layers=2, tie=True,
                                         dropout_input=0.5, dropout_hidden=0.5,
                                         dropout_output=0.5, seq_len=35, batch_size=20,
                                         steps=40 * 929_589 // (20 * 35), optimizer="sgd",
                                         lr=20.0, clip=0.25, schedule="step", decay_rate=0.25,
                                         decay_steps=10 * 929_589 // (20 * 35),
                                         eval_every=2000, eval_tokens=None, sample_len=60),
    # locuslab/TCN word_cnn defaults: emsize 600, nhid 600, levels 4, ksize 3, dropout 0.45,
    # emb_dropout 0.25, tied, SGD lr 4, clip 0.35, seq_len 80, validseqlen 40, batch 16.
    ("word", "paper", "tcn"): dict(_BASE, embed=600, hidden=600, layers=4, kernel=3, tie=True,
                                   dropout_input=0.25, dropout_hidden=0.45, seq_len=80,
                                   history=40, batch_size=16,
                                   steps=100 * 929_589 // (16 * 40), optimizer="sgd", lr=4.0,
                                   clip=0.35, eval_every=2000, eval_tokens=None, sample_len=60),
}

_OVERRIDES = ("embed", "hidden", "layers", "kernel", "dropout_input", "dropout_hidden",
              "dropout_output", "seq_len", "history", "k2", "batch_size", "steps", "optimizer",
              "lr", "clip", "eval_every", "eval_tokens", "eval_batch_size", "sample_len")

#: Flags that choose the model, the data or the randomness: resuming a run keeps its values (a
#: different value given with ``--resume`` is an error naming the flag; ``--steps`` may change).
_FIXED_ON_RESUME = ("model", "corpus", "preset", "seed", "tie") + tuple(
    n for n in _OVERRIDES if n != "steps")
#: The config keys a run.json must hold to be resumed, sampled or evaluated.
_REQUIRED = ("backend", "batch_size", "clip", "corpus", "dropout_hidden", "dropout_input",
             "dropout_output", "embed", "eval_batch_size", "eval_every", "eval_tokens", "hidden",
             "history", "k2", "kernel", "layers", "level", "lr", "model", "optimizer",
             "sample_len", "seed", "seq_len", "steps", "tie")
_DEFAULTS = {"model": "lstm", "preset": "quick", "seed": 0}
DEFAULT_CORPUS = {"char": "tinyshakespeare", "word": "ptb-word"}

RUN_FILE = "run.json"
MODEL_FILE = "model.json"
SAMPLES_FILE = "samples.txt"
RESULTS_FILE = "results.json"


def resolve_config(args: argparse.Namespace, level: str) -> dict[str, Any]:
    """The preset for (level, preset, model family) with the command-line overrides."""
    family = "tcn" if args.model == "tcn" else "recurrent"
    cfg = dict(PRESETS[(level, args.preset, family)])
    for name in _OVERRIDES:
        value = getattr(args, name, None)
        if value is not None:
            cfg[name] = value
    if args.tie is not None:
        cfg["tie"] = args.tie
    if family == "recurrent":
        cfg["history"] = 0
    cfg.update(corpus=str(args.corpus), model=args.model, preset=args.preset, level=level,
               seed=args.seed, backend=args.backend)
    return cfg


def build_model(cfg: dict[str, Any], vocab_size: int) -> LanguageModel:
    return LanguageModel(
        arch=cfg["model"], vocab_size=vocab_size, embed_size=cfg["embed"],
        hidden_size=cfg["hidden"], num_layers=cfg["layers"], kernel_size=cfg["kernel"],
        dropout_input=cfg["dropout_input"], dropout_hidden=cfg["dropout_hidden"],
        dropout_output=cfg["dropout_output"], tie_weights=cfg["tie"], backend=cfg["backend"])


def build_optimizer(cfg: dict[str, Any]):
    return make_optimizer(cfg["optimizer"], cfg["lr"], clip_norm=cfg["clip"],
                          schedule=cfg.get("schedule"), total_steps=cfg["steps"],
                          decay_rate=cfg.get("decay_rate", 0.1),
                          decay_steps=cfg.get("decay_steps"))


def _headline(level: str, bits: float) -> dict[str, float]:
    """bpc at char level; perplexity (and bits per word) at word level."""
    if level == "char":
        return {"bpc": bits}
    return {"ppl": 2.0 ** bits, "bpw": bits}


def evaluate(model, params, ids, cfg, *, max_tokens=None) -> dict[str, float]:
    r = evaluate_stream(model, params, ids, batch_size=cfg["eval_batch_size"],
                        seq_len=cfg["seq_len"], history=cfg["history"], max_tokens=max_tokens)
    return {"loss": r["loss"], **_headline(cfg["level"], r["bits"])}


def default_prime(vocab, valid_ids) -> str:
    """The start of the validation text (64 characters or 12 words): it warms the carry up.

    A model trained with truncated BPTT sees a zero carry only at epoch starts, and a sample
    started from one token can wander off (PTB characters after a bare newline do).
    """
    if vocab.level == "word":
        return " ".join(vocab.tokens[int(i)] for i in valid_ids[:12]).replace("<eos>", "\n")
    return vocab.decode(valid_ids[:64])


# ---------------------------------------------------------------------------------------------
# train


def read_run_config(run: Path, flag: str, level: str | None = None) -> dict[str, Any]:
    """``run.json`` of a run directory given as ``flag``, checked: one-line errors naming the
    flag and the path when it is missing, not JSON, or not a char_lm.py / word_lm.py run."""
    if not run.exists():
        raise FileNotFoundError(f"{flag} {run}: no such run directory")
    check_dir(flag, run)
    what = "the run.json that char_lm.py / word_lm.py write at the start of a run"
    saved = read_json(run / RUN_FILE, flag=flag, what=what)
    cfg = saved.get("config")
    missing = [k for k in _REQUIRED if k not in cfg] if isinstance(cfg, dict) else ["config"]
    if missing:
        raise UserError(f"{flag} {run}: {run / RUN_FILE} lacks {', '.join(missing)}; expected "
                        f"{what}")
    if level is not None and cfg["level"] != level:
        script = "char_lm.py" if cfg["level"] == "char" else "word_lm.py"
        raise UserError(f"{flag} {run} is a {cfg['level']}-level run; resume it with {script}")
    return saved


def _check_resume_flags(args: argparse.Namespace, cfg: dict[str, Any], out: Path) -> None:
    """A flag given with ``--resume`` that would change the run's model or data is an error."""
    for name in _FIXED_ON_RESUME:
        value = getattr(args, name, None)
        if value is None or value == cfg.get(name):
            continue
        if name == "corpus" and Path(str(value)).resolve() == Path(str(cfg[name])).resolve():
            continue
        flag = "--" + name.replace("_", "-")
        raise UserError(f"{flag} {value} differs from the run's {name}={cfg.get(name)!r} in "
                        f"{out / RUN_FILE}; a resumed run keeps its configuration (only --steps "
                        "may change): drop the flag, or start a new run in another --out")


def _check_config(cfg: dict[str, Any], out: Path, *, resume: bool) -> None:
    """Cross-flag checks that no single argparse type can make, before any data is read."""
    if cfg["history"] >= cfg["seq_len"]:
        raise UserError(f"--history {cfg['history']} must be smaller than --seq-len "
                        f"{cfg['seq_len']} (the scored positions are seq_len - history)")
    if cfg["k2"] is not None and cfg["k2"] > cfg["seq_len"]:
        raise UserError(f"--k2 {cfg['k2']} must be at most --seq-len {cfg['seq_len']}")
    done = latest_step(out) if resume else None
    if done is not None and done > cfg["steps"]:
        raise UserError(f"--steps {cfg['steps']}: the run in {out} is already at step {done}")


def train(args: argparse.Namespace, level: str = "char") -> dict[str, Any]:
    out = Path(args.out)
    # Everything that can reject the input runs before a file is written or a step compiled.
    if args.resume:
        saved = read_run_config(out, "--resume: --out", level)
        cfg = saved["config"]
        _check_resume_flags(args, cfg, out)
        if args.steps is not None:
            cfg["steps"] = args.steps
        data_dir = args.data_dir or saved.get("data_dir")
    else:
        check_output_dir("--out", out)
        if (out / RUN_FILE).exists() and not args.overwrite:
            raise FileExistsError(f"--out {out} already holds a run; pass --resume to continue "
                                  "it, --overwrite to replace it, or choose another --out")
        cfg = resolve_config(args, level)
        data_dir = args.data_dir
        if cfg["corpus"] not in CORPORA:  # a text file
            if not Path(cfg["corpus"]).expanduser().exists():
                raise FileNotFoundError(
                    f"--corpus {cfg['corpus']}: neither a built-in corpus "
                    f"({', '.join(CORPORA)}) nor an existing file")
            check_file("--corpus", cfg["corpus"])
    if args.data_dir is not None:
        check_dir("--data-dir", args.data_dir)
    _check_config(cfg, out, resume=args.resume)
    check_devices(getattr(args, "devices", 1), cfg["batch_size"],
                  model=getattr(args, "model_parallel", 1))
    corpus = load_corpus(cfg["corpus"], data_dir, level=level)
    vocab = corpus.vocab
    model = build_model(cfg, len(vocab))
    recurrent = model.is_recurrent
    if args.sample_prime is not None:
        try:
            encode_prime(vocab, args.sample_prime)
        except ValueError as exc:
            raise UserError(f"--sample-prime: {exc}") from None
    if args.resume:  # the checkpoint must fit this model: checked before any file is rewritten
        check_checkpoint(out, _abstract_state(model, cfg))

    out.mkdir(parents=True, exist_ok=True)
    (out / RUN_FILE).write_text(json.dumps({"config": cfg, "data_dir": data_dir}, indent=2))
    (out / MODEL_FILE).write_text(json.dumps(model.to_config(), indent=2))
    save_vocabulary(vocab, out / "vocab.json")
    start = (latest_step(out) or 0) if args.resume else 0
    if args.resume:  # the samples of steps after the checkpoint are written again below
        _truncate_samples(out / SAMPLES_FILE, start)
    else:
        (out / SAMPLES_FILE).write_text("")

    train_ids, valid_ids, test_ids = (corpus.splits[k] for k in ("train", "valid", "test"))
    streams = TokenStreams(train_ids, cfg["batch_size"], cfg["seq_len"], cfg["history"])
    params = model.init(jax.random.PRNGKey(cfg["seed"]))
    optimizer = build_optimizer(cfg)
    baseline = unigram_entropy_bits(train_ids, test_ids, len(vocab))
    metric = "bpc" if level == "char" else "ppl"
    print(f"{corpus!r}\nmodel: {model.arch} {param_count(params):,} params; "
          f"{len(streams)} chunks of {cfg['batch_size']}x{cfg['seq_len']} per epoch; "
          f"unigram baseline {_headline(level, baseline)[metric]:.4g} {metric}\n"
          f"run directory: {out}", flush=True)

    eval_every = max(1, min(cfg["eval_every"], cfg["steps"]))
    next_eval = [start]
    prime = (args.sample_prime if args.sample_prime is not None
             else default_prime(vocab, corpus.splits["valid"]))

    def eval_fn(p):
        # fit evaluates every eval_every steps and after the last: recover the step number.
        s = min((next_eval[0] // eval_every + 1) * eval_every, cfg["steps"])
        next_eval[0] = s
        metrics = evaluate(model, p, valid_ids, cfg, max_tokens=cfg["eval_tokens"])
        text = sample_text(model, p, vocab, prime, cfg["sample_len"], temperature=0.8,
                           seed=cfg["seed"])
        with open(out / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.write(f"=== step {s} (valid {metric} {metrics[metric]:.4g}) ===\n{text}\n\n")
        return metrics

    if recurrent:
        loss_fn, extra = make_tbptt_loss_fn(model, k2=cfg["k2"]), model.initial_carry(
            cfg["batch_size"])
    else:
        loss_fn, extra = make_window_loss_fn(model), None
    result = fit(params=params, loss_fn=loss_fn, optimizer=optimizer,
                 train_batches=streams.batch, num_steps=cfg["steps"], run_dir=out,
                 seed=cfg["seed"], eval_fn=eval_fn, eval_every=eval_every,
                 checkpoint_every=eval_every, log_every=max(1, min(50, eval_every // 5)),
                 resume=args.resume, overwrite=args.overwrite, config=cfg,
                 progress=not args.no_progress and sys.stderr.isatty(),
                 desc=f"{corpus.name} {model.arch}", extra=extra,
                 mesh=mesh_for(getattr(args, "devices", 1), getattr(args, "model_parallel", 1)))

    t0 = time.perf_counter()
    final_params = result.state.params
    valid = evaluate(model, final_params, valid_ids, cfg)
    test = evaluate(model, final_params, test_ids, cfg)
    eval_s = time.perf_counter() - t0
    history = load_history(out)
    for row in history:  # train rows: bits of the chunk -> the headline metric
        if row.get("split") == "train" and "bits" in row:
            row.update(_headline(level, row["bits"]))
    plot_curves({model.arch: history}, metric, out / "curves.png",
                baseline=_headline(level, baseline)[metric], logy=metric == "ppl",
                title=f"{corpus.name} {model.arch}: {metric}", baseline_label="unigram")
    results = {
        "corpus": corpus.name, "level": level, "model": model.arch,
        "params": param_count(final_params), "steps": cfg["steps"],
        "tokens_per_step": cfg["batch_size"] * (cfg["seq_len"] - cfg["history"]),
        f"valid_{metric}": valid[metric], f"test_{metric}": test[metric],
        "valid": valid, "test": test,
        f"unigram_{metric}": _headline(level, baseline)[metric],
        "steps_per_s": result.steps_per_s, "train_wall_s": result.wall_s,
        "final_eval_s": eval_s, "start_step": result.start_step,
        "platform": jax.default_backend(), "config": cfg,
    }
    (out / RESULTS_FILE).write_text(json.dumps(results, indent=2))
    print(f"valid {metric} {valid[metric]:.4f}  test {metric} {test[metric]:.4f}  "
          f"(unigram {results[f'unigram_{metric}']:.4f}; {result.steps_per_s:.2f} steps/s, "
          f"{result.wall_s:.0f} s)\nwrote {out}/{{results.json,curves.png,samples.txt}}",
          flush=True)
    return results


_SAMPLE_HEADER = "=== step "


def _truncate_samples(path: Path, last_step: int) -> None:
    """Keeps the samples of steps ``<= last_step`` in ``samples.txt`` (a resumed run writes
    those of the later steps again, so that the file equals an uninterrupted run's)."""
    if not path.is_file():
        path.write_text("", encoding="utf-8")
        return
    text = path.read_text(encoding="utf-8")
    cut = len(text)
    pos = 0
    while True:
        pos = text.find(_SAMPLE_HEADER, pos)
        if pos < 0:
            break
        if pos == 0 or text[pos - 1] == "\n":
            head = text[pos + len(_SAMPLE_HEADER):].split(" ", 1)[0]
            if head.isdigit() and int(head) > last_step:
                cut = pos
                break
        pos += len(_SAMPLE_HEADER)
    if cut < len(text):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text[:cut], encoding="utf-8")
        tmp.replace(path)


# ---------------------------------------------------------------------------------------------
# sample


def _abstract_state(model: LanguageModel, cfg: dict[str, Any]) -> TrainState:
    """The shapes of a run's :class:`TrainState` (what its checkpoints hold), computed without
    allocating it."""
    extra = model.initial_carry(cfg["batch_size"]) if model.is_recurrent else None
    return jax.eval_shape(lambda: TrainState.create(model.init(jax.random.PRNGKey(0)),
                                                    build_optimizer(cfg), 0, extra))


def load_run(run: str | Path, step: int | None = None):
    """``(model, params, vocab, config)`` of a saved run (newest checkpoint by default)."""
    run = Path(run)
    cfg = read_run_config(run, "--run")["config"]
    for name in (MODEL_FILE, "vocab.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"--run {run}: {run / name} not found; is {run} a run "
                                    "directory of char_lm.py / word_lm.py?")
    model_cfg = read_json(run / MODEL_FILE, flag="--run", what="a LanguageModel config")
    try:
        model = LanguageModel(**model_cfg)
    except (TypeError, ValueError) as exc:
        raise UserError(f"--run {run}: {run / MODEL_FILE} does not describe a LanguageModel "
                        f"({exc})") from None
    vocab = load_vocabulary(run / "vocab.json")
    state = restore_checkpoint(run, _abstract_state(model, cfg), step)
    return model, state.params, vocab, cfg


def sample_command(args: argparse.Namespace) -> str:
    model, params, vocab, _ = load_run(args.run, args.step)
    try:
        encode_prime(vocab, args.prime)
    except ValueError as exc:
        raise UserError(f"--prime: {exc}") from None
    text = sample_text(model, params, vocab, args.prime, args.n, temperature=args.temperature,
                       top_k=args.top_k, greedy=args.greedy, seed=args.seed)
    print(text)
    return text


def evaluate_command(args: argparse.Namespace) -> dict[str, Any]:
    """Scores a saved run's checkpoint on whole splits (``--eval-batch-size`` streams)."""
    if args.data_dir is not None:
        check_dir("--data-dir", args.data_dir)
    model, params, vocab, cfg = load_run(args.run, args.step)
    saved = read_run_config(Path(args.run), "--run")
    corpus = load_corpus(cfg["corpus"], args.data_dir or saved.get("data_dir"), level=vocab.level)
    if tuple(corpus.vocab.tokens) != tuple(vocab.tokens):
        raise ValueError(f"the corpus {cfg['corpus']!r} no longer has the run's vocabulary")
    if args.eval_batch_size is not None:
        cfg["eval_batch_size"] = args.eval_batch_size
    out = {}
    for split in args.splits.split(","):
        out[split] = evaluate(model, params, corpus.splits[split], cfg)
        metric = "bpc" if vocab.level == "char" else "ppl"
        print(f"{split}: {metric} {out[split][metric]:.4f} ({cfg['eval_batch_size']} streams)")
    return out


# ---------------------------------------------------------------------------------------------
# command line


def _flag(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y"):
        return True
    if value.lower() in ("0", "false", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {value!r}")


def train_parser(level: str, doc: str) -> argparse.ArgumentParser:
    default_corpus = DEFAULT_CORPUS[level]
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=doc)
    corpora = "tinyshakespeare, ptb-char or FILE" if level == "char" else "ptb-word or FILE"
    ap.add_argument("--corpus", default=None, help=f"{corpora} (default {default_corpus})")
    ap.add_argument("--model", default=None,
                    help=f"one of {', '.join(LM_ARCHS)} (default {_DEFAULTS['model']})")
    ap.add_argument("--data-dir", default=None, help="data directory (else $SEQJAX_DATA)")
    ap.add_argument("--out", required=True, help="the run directory")
    ap.add_argument("--preset", default=None, choices=("quick", "paper"),
                    help=f"(default {_DEFAULTS['preset']})")
    ap.add_argument("--steps", type=positive_int, default=None)
    ap.add_argument("--batch-size", type=positive_int, default=None, help="parallel streams B")
    ap.add_argument("--seq-len", type=positive_int, default=None,
                    help="TBPTT chunk k1 (recurrent) or window length (TCN)")
    ap.add_argument("--k2", type=positive_int, default=None,
                    help="backprop through the last k2 steps")
    ap.add_argument("--history", type=non_negative_int, default=None,
                    help="TCN: unscored context positions per window (seq_len - validseqlen)")
    ap.add_argument("--embed", type=positive_int, default=None)
    ap.add_argument("--hidden", type=positive_int, default=None)
    ap.add_argument("--layers", type=positive_int, default=None)
    ap.add_argument("--kernel", type=positive_int, default=None, help="TCN kernel size")
    ap.add_argument("--dropout-input", type=fraction, default=None)
    ap.add_argument("--dropout-hidden", type=fraction, default=None)
    ap.add_argument("--dropout-output", type=fraction, default=None)
    ap.add_argument("--tie", type=_flag, default=None, help="tie input/output embeddings")
    ap.add_argument("--optimizer", default=None, choices=("adam", "adamw", "rmsprop", "sgd"))
    ap.add_argument("--lr", type=positive_float, default=None)
    ap.add_argument("--clip", type=positive_float, default=None)
    ap.add_argument("--eval-every", type=positive_int, default=None)
    ap.add_argument("--eval-tokens", type=positive_int, default=None,
                    help="validation tokens scored during training (the final scores use all)")
    ap.add_argument("--eval-batch-size", type=positive_int, default=None)
    ap.add_argument("--sample-len", type=positive_int, default=None,
                    help="tokens per checkpoint sample")
    ap.add_argument("--sample-prime", default=None,
                    help="prime of the checkpoint samples (default: the start of the valid split)")
    ap.add_argument("--backend", default="auto", choices=("auto", "scan", "pallas", "native"))
    ap.add_argument("--devices", type=non_negative_int, default=1,
                    help="data-parallel over this many devices (0: all); streams B must divide")
    ap.add_argument("--model-parallel", type=positive_int, default=1,
                    help="split large embedding/output matrices over this many of the devices")
    ap.add_argument("--seed", type=non_negative_int, default=None,
                    help=f"(default {_DEFAULTS['seed']})")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run in --out from its newest checkpoint")
    ap.add_argument("--overwrite", action="store_true", help="replace a run in --out")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def sample_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="sample", description="sample from a saved run")
    ap.add_argument("--run", required=True, help="the run directory")
    ap.add_argument("--prime", default="\n")
    ap.add_argument("--temperature", type=positive_float, default=1.0)
    ap.add_argument("-n", type=positive_int, default=500, help="tokens to generate")
    ap.add_argument("--top-k", type=positive_int, default=None)
    ap.add_argument("--greedy", action="store_true")
    ap.add_argument("--seed", type=non_negative_int, default=0)
    ap.add_argument("--step", type=non_negative_int, default=None,
                    help="checkpoint step (default newest)")
    return ap


def evaluate_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="evaluate", description="score a saved run")
    ap.add_argument("--run", required=True, help="the run directory")
    ap.add_argument("--step", type=non_negative_int, default=None,
                    help="checkpoint step (default newest)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--eval-batch-size", type=positive_int, default=None,
                    help="parallel evaluation streams (each starts from a zero carry)")
    ap.add_argument("--splits", default="valid,test", help="comma-separated: train, valid, test")
    return ap


def parse_evaluate_args(argv) -> argparse.Namespace:
    ap = evaluate_parser()
    args = ap.parse_args(argv)
    splits = [s.strip() for s in args.splits.split(",") if s.strip()]
    bad = [s for s in splits if s not in ("train", "valid", "test")]
    if bad or not splits:
        ap.error(f"--splits {args.splits!r}: unknown split(s) {bad}; choose from train, valid, "
                 "test")
    args.splits = ",".join(dict.fromkeys(splits))
    return args


def parse_train_args(argv, level: str, doc: str) -> argparse.Namespace:
    ap = train_parser(level, doc)
    args = ap.parse_args(argv)
    if args.resume and args.overwrite:
        ap.error("--resume continues the run in --out and --overwrite replaces it; give one")
    if not args.resume:  # on --resume, a flag left out keeps the run's value
        for name, value in _DEFAULTS.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
        if args.corpus is None:
            args.corpus = DEFAULT_CORPUS[level]
        if args.model not in LM_ARCHS:
            ap.error(f"unknown --model {args.model!r}; choose from {', '.join(LM_ARCHS)}")
    return args


def main(argv=None, *, level: str = "char", doc: str = __doc__) -> Any:
    argv = list(sys.argv[1:] if argv is None else argv)
    initialize_distributed()  # multi-host runs: SEQJAX_COORDINATOR etc.; a no-op otherwise
    if argv and argv[0] == "sample":
        return sample_command(sample_parser().parse_args(argv[1:]))
    if argv and argv[0] == "evaluate":
        return evaluate_command(parse_evaluate_args(argv[1:]))
    return train(parse_train_args(argv, level, doc), level)


if __name__ == "__main__":
    run_main(main)
