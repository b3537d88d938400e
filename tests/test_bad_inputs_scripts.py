"""No bad input reaches the user as a traceback (issue #17): scripts, training, checkpoints.

A table of bad command lines for every script in ``experiments/``, run in-process through
:func:`seqjax.cli.run_main` (the scripts' ``__main__`` entry): each must exit with status 2 and
say what is wrong in one line naming the flag or the path, before any training starts. Then the
training and checkpoint functions, which raise exceptions naming the argument, directory and
mismatching path; and two real ``python experiments/...`` processes, to prove that the
command line prints no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from seqjax import cli
from seqjax.train import (
    CheckpointError,
    NonFiniteLossError,
    check_checkpoint,
    fit,
    fit_task,
    latest_step,
    make_optimizer,
    make_schedule,
    restore_checkpoint,
)
from seqjax.train.state import TrainState

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
DATA_DIR = Path(os.environ.get("SEQJAX_DATA") or REPO / "data")  # as in conftest.py
sys.path.insert(0, str(EXPERIMENTS))

import char_lm  # noqa: E402
import gradient_flow  # noqa: E402
import hidden_states  # noqa: E402
import memory_tasks  # noqa: E402
import sentiment  # noqa: E402
import tcn_vs_rnn  # noqa: E402
import translate  # noqa: E402
import word2vec  # noqa: E402
import word_lm  # noqa: E402

SCRIPTS = {m.__name__: m for m in (tcn_vs_rnn, char_lm, word_lm, memory_tasks, sentiment,
                                    word2vec, translate, gradient_flow, hidden_states)}

#: What this file exercises: every script (and char_lm's subcommands) and the public training
#: and checkpoint functions.
COVERED = {
    "tcn_vs_rnn", "char_lm", "char_lm sample", "char_lm evaluate", "word_lm", "memory_tasks",
    "sentiment", "word2vec", "translate", "gradient_flow", "hidden_states",
    "fit", "fit_task", "restore_checkpoint", "check_checkpoint", "latest_step",
    "make_optimizer", "make_schedule", "run_main",
}

ARGPARSE = "argparse"  # the error comes from argparse: usage lines, then "prog: error: ..."
ONE_LINE = "one line"  # the error comes from run_main: exactly "error: ..." on one line


# ---------------------------------------------------------------------------------------------
# Paths the cases point at.


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    p = {
        "file": root / "afile.txt",
        "empty": root / "empty.txt",
        "blank": root / "blank.txt",
        "missing": root / "missing",
        "dir": root / "adir",
        "garbage_json": root / "garbage_json",
        "no_argv": root / "no_argv",
        "small": root / "small.txt",
    }
    p["file"].write_text("some text\n")
    p["empty"].write_text("")
    p["blank"].write_text("  \n\n ")
    p["dir"].mkdir()
    p["garbage_json"].mkdir()
    (p["garbage_json"] / "run.json").write_text("{not json")
    p["no_argv"].mkdir()
    (p["no_argv"] / "run.json").write_text(json.dumps({"config": {}}))
    text = (DATA_DIR / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    p["small"].write_text(text[:3000], encoding="utf-8")
    return p


LM_TINY = ["--embed", "4", "--hidden", "8", "--layers", "1", "--seq-len", "8", "--batch-size",
           "2", "--eval-every", "1", "--eval-tokens", "64", "--eval-batch-size", "2",
           "--sample-len", "5", "--no-progress"]


@pytest.fixture(scope="module")
def lm_run(paths):
    """A finished 2-step char_lm run (checkpoints 1 and 2, samples of steps 1 and 2)."""
    out = paths["dir"].parent / "lm_run"
    char_lm.main(["--corpus", str(paths["small"]), "--out", str(out), "--steps", "2",
                  *LM_TINY])
    return out


def _copy_run(lm_run: Path, name: str) -> Path:
    dst = lm_run.parent / name
    if not dst.exists():
        shutil.copytree(lm_run, dst)
    return dst


@pytest.fixture(scope="module")
def runs(lm_run):
    """Damaged copies of ``lm_run``."""
    out = {"run": lm_run}
    # the run.json says hidden 16: resuming builds another model than the checkpoint's
    edited = _copy_run(lm_run, "edited_config")
    saved = json.loads((edited / "run.json").read_text())
    saved["config"]["hidden"] = 16
    (edited / "run.json").write_text(json.dumps(saved))
    out["edited_config"] = edited
    # model.json says hidden 16: sampling restores into another model
    edited_model = _copy_run(lm_run, "edited_model")
    model = json.loads((edited_model / "model.json").read_text())
    model["hidden_size"] = 16
    (edited_model / "model.json").write_text(json.dumps(model))
    out["edited_model"] = edited_model
    garbage_model = _copy_run(lm_run, "garbage_model")
    (garbage_model / "model.json").write_text(json.dumps({"colour": "blue"}))
    out["garbage_model"] = garbage_model
    # the newest checkpoint directory holds junk
    junk = _copy_run(lm_run, "junk_checkpoint")
    step = junk / "checkpoints" / "2"
    shutil.rmtree(step)
    step.mkdir()
    (step / "junk").write_text("not a checkpoint")
    out["junk_checkpoint"] = junk
    return out


@pytest.fixture(scope="module")
def comparisons(fit_run):
    """Run directories of tcn_vs_rnn.py and memory_tasks.py whose model checkpoint is of
    another model (a 3x4 ``w`` and a ``b``, from :func:`fit_run`)."""
    out = {}
    for script, argv, model in (
            ("tcn_mismatch", ["--task", "adding", "--seq-len", "5", "--steps", "2", "--models",
                              "rnn", "--no-progress"], "rnn"),
            ("memory_mismatch", ["--task", "copy", "--steps", "2", "--models", "lstm",
                                 "--no-progress"], "lstm")):
        run = fit_run.parent / script
        if not run.exists():
            run.mkdir()
            (run / "run.json").write_text(json.dumps({"argv": argv}))
            shutil.copytree(fit_run, run / model)
        out[script] = run
    return out


# ---------------------------------------------------------------------------------------------
# The table: (script, argv, what the message must contain, ARGPARSE or ONE_LINE). ``{name}`` in
# argv and message is replaced by the path ``name`` of the fixtures.

CASES = [
    # tcn_vs_rnn
    ("tcn_vs_rnn", ["--steps", "0"], "argument --steps", ARGPARSE),
    ("tcn_vs_rnn", ["--batch-size", "0"], "argument --batch-size", ARGPARSE),
    ("tcn_vs_rnn", ["--seq-len", "-3"], "argument --seq-len", ARGPARSE),
    ("tcn_vs_rnn", ["--eval-every", "0"], "argument --eval-every", ARGPARSE),
    ("tcn_vs_rnn", ["--steps", "ten"], "argument --steps", ARGPARSE),
    ("tcn_vs_rnn", ["--devices", "-1"], "argument --devices", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.lr"], "expected MODEL.FIELD=VALUE", ARGPARSE),
    ("tcn_vs_rnn", ["--models", "tcn", "--set", "lstm.lr=1"], "model 'lstm' is not in",
     ARGPARSE),
    ("tcn_vs_rnn", ["--set", "gru.chrono=600"], "nor an argument of the gru cell", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.lr=abc"], "lr must be a number (float), got 'abc'",
     ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.lr=0"], "lr must be > 0", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.clip=nan"], "clip must be a finite number", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "tcn.dropout=1"], "dropout must be < 1", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "gru.hidden=2.5"], "hidden must be an int", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "tcn.layers=none"], "layers must be an int, not none", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.residual=1"], "residual must be true or false", ARGPARSE),
    ("tcn_vs_rnn", ["--set", "rnn.optimizer=adagrad"], "optimizer must be one of adam",
     ARGPARSE),
    ("tcn_vs_rnn", ["--set", "lstm.chrono=abc"], "LSTM.chrono must be", ONE_LINE),
    ("tcn_vs_rnn", ["--task-arg", "nosuch=1"],
     "task 'adding' takes no argument 'nosuch'; it takes: eval_size, markers", ARGPARSE),
    ("tcn_vs_rnn", ["--task-arg", "seq_len=30"], "give seq_len as --seq-len", ARGPARSE),
    ("tcn_vs_rnn", ["--task-arg", "markers=bogus"], "markers='bogus' must be", ONE_LINE),
    ("tcn_vs_rnn", ["--out", "{file}"], "--out {file}", ONE_LINE),
    ("tcn_vs_rnn", ["--data-dir", "{missing}"], "--data-dir {missing}", ONE_LINE),
    ("tcn_vs_rnn", ["--data-dir", "{file}"], "--data-dir {file}", ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{missing}"], "--resume {missing}", ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{file}"], "--resume {file}", ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{dir}"], "{dir}/run.json not found", ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{garbage_json}"], "{garbage_json}/run.json is not valid JSON",
     ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{no_argv}"], "'argv'", ONE_LINE),
    ("tcn_vs_rnn", ["--resume", "{tcn_mismatch}"],
     "checkpoint {tcn_mismatch}/rnn/checkpoints/2 does not match", ONE_LINE),
    # char_lm: training
    ("char_lm", ["--out", "{missing}", "--steps", "0"], "argument --steps", ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--batch-size", "0"], "argument --batch-size",
     ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--seq-len", "0"], "argument --seq-len", ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--hidden", "0"], "argument --hidden", ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--dropout-hidden", "1.5"], "argument --dropout-hidden",
     ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--lr", "0"], "argument --lr", ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--model", "transformer"], "--model", ARGPARSE),
    ("char_lm", ["--out", "{missing}", "--resume", "--overwrite"], "--overwrite", ARGPARSE),
    ("char_lm", ["--corpus", "{missing}", "--out", "{dir}/x"], "--corpus {missing}", ONE_LINE),
    ("char_lm", ["--corpus", "{empty}", "--out", "{dir}/x"], "--corpus {empty} is empty",
     ONE_LINE),
    ("char_lm", ["--corpus", "{dir}", "--out", "{dir}/x"], "--corpus {dir} is a directory",
     ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{file}"], "--out {file}", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{file}/sub"], "{file} is a file", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{dir}/x", "--data-dir", "{file}"],
     "--data-dir {file}", ONE_LINE),
    ("char_lm", ["--corpus", "tinyshakespeare", "--out", "{dir}/x", "--data-dir", "{missing}"],
     "--data-dir {missing}", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{dir}/x", "--model", "tcn", "--seq-len", "10",
                 "--history", "20"], "--history 20 must be smaller than --seq-len 10", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{dir}/x", "--seq-len", "10", "--k2", "50"],
     "--k2 50", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{dir}/x", "--sample-prime", "@@"],
     "--sample-prime", ONE_LINE),
    ("char_lm", ["--corpus", "{small}", "--out", "{run}"], "--out {run} already holds a run",
     ONE_LINE),
    # char_lm: --resume
    ("char_lm", ["--out", "{missing}", "--resume"], "--out {missing}: no such run directory",
     ONE_LINE),
    ("char_lm", ["--out", "{file}", "--resume"], "--out {file} is a file", ONE_LINE),
    ("char_lm", ["--out", "{dir}", "--resume"], "{dir}/run.json not found", ONE_LINE),
    ("char_lm", ["--out", "{garbage_json}", "--resume"], "run.json is not valid JSON",
     ONE_LINE),
    ("char_lm", ["--out", "{no_argv}", "--resume"], "{no_argv}/run.json lacks", ONE_LINE),
    ("char_lm", ["--out", "{run}", "--resume", "--hidden", "32"], "--hidden 32 differs",
     ONE_LINE),
    ("char_lm", ["--out", "{run}", "--resume", "--steps", "1"],
     "--steps 1: the run in {run} is already at step 2", ONE_LINE),
    ("char_lm", ["--out", "{edited_config}", "--resume", "--no-progress"],
     "{edited_config}/checkpoints/2 does not match", ONE_LINE),
    ("char_lm", ["--out", "{junk_checkpoint}", "--resume", "--no-progress"],
     "{junk_checkpoint}/checkpoints/2 is not a readable orbax checkpoint", ONE_LINE),
    # char_lm sample / evaluate
    ("char_lm", ["sample", "--run", "{missing}"], "--run {missing}: no such run directory",
     ONE_LINE),
    ("char_lm", ["sample", "--run", "{file}"], "--run {file} is a file", ONE_LINE),
    ("char_lm", ["sample", "--run", "{dir}"], "{dir}/run.json not found", ONE_LINE),
    ("char_lm", ["sample", "--run", "{run}", "-n", "0"], "argument -n", ARGPARSE),
    ("char_lm", ["sample", "--run", "{run}", "--temperature", "0"], "argument --temperature",
     ARGPARSE),
    ("char_lm", ["sample", "--run", "{run}", "--step", "999"], "no checkpoint at step=999",
     ONE_LINE),
    ("char_lm", ["sample", "--run", "{run}", "--prime", "@"], "--prime", ONE_LINE),
    ("char_lm", ["sample", "--run", "{garbage_model}"], "{garbage_model}/model.json",
     ONE_LINE),
    ("char_lm", ["sample", "--run", "{edited_model}"],
     "{edited_model}/checkpoints/2 does not match", ONE_LINE),
    ("char_lm", ["evaluate", "--run", "{run}", "--splits", "valid,dev"], "--splits", ARGPARSE),
    ("char_lm", ["evaluate", "--run", "{run}", "--data-dir", "{missing}"],
     "--data-dir {missing}", ONE_LINE),
    # word_lm (char_lm's driver at word level)
    ("word_lm", ["--out", "{missing}", "--steps", "0"], "argument --steps", ARGPARSE),
    ("word_lm", ["--corpus", "{blank}", "--out", "{dir}/w"], "{blank}", ONE_LINE),
    ("word_lm", ["--out", "{run}", "--resume"], "char-level run; resume it with char_lm.py",
     ONE_LINE),
    # memory_tasks
    ("memory_tasks", ["--steps", "0"], "argument --steps", ARGPARSE),
    ("memory_tasks", ["--batch-size", "0"], "argument --batch-size", ARGPARSE),
    ("memory_tasks", ["--lr", "0"], "argument --lr", ARGPARSE),
    ("memory_tasks", ["--eval-size", "0"], "argument --eval-size", ARGPARSE),
    ("memory_tasks", ["--eval-lengths", "40,0"], "--eval-lengths", ARGPARSE),
    ("memory_tasks", ["--out", "{file}"], "--out {file}", ONE_LINE),
    ("memory_tasks", ["--resume", "{missing}"], "--resume {missing}", ONE_LINE),
    ("memory_tasks", ["--resume", "{garbage_json}"], "run.json is not valid JSON", ONE_LINE),
    ("memory_tasks", ["--resume", "{memory_mismatch}"],
     "checkpoint {memory_mismatch}/lstm/checkpoints/2 does not match", ONE_LINE),
    # sentiment
    ("sentiment", ["--folds", "0"], "argument --folds", ARGPARSE),
    ("sentiment", ["--folds", "11"], "--folds 11", ARGPARSE),
    ("sentiment", ["--epochs", "0"], "argument --epochs", ARGPARSE),
    ("sentiment", ["--batch-size", "0"], "argument --batch-size", ARGPARSE),
    ("sentiment", ["--dropout", "1"], "argument --dropout", ARGPARSE),
    ("sentiment", ["--models", "bilstm,transformer"], "--models", ARGPARSE),
    ("sentiment", ["--embeddings", "glove"], "--embeddings", ARGPARSE),
    ("sentiment", ["--data-dir", "{missing}"], "--data-dir {missing}", ONE_LINE),
    ("sentiment", ["--data-dir", "{file}"], "--data-dir {file}", ONE_LINE),
    ("sentiment", ["--data-dir", "{dir}"], "{dir}/rt-polarity", ONE_LINE),
    ("sentiment", ["--out", "{file}"], "--out {file}", ONE_LINE),
    # word2vec
    ("word2vec", ["--dim", "0"], "argument --dim", ARGPARSE),
    ("word2vec", ["--epochs", "0"], "argument --epochs", ARGPARSE),
    ("word2vec", ["--window", "0"], "argument --window", ARGPARSE),
    ("word2vec", ["--lr", "-1"], "argument --lr", ARGPARSE),
    ("word2vec", ["--text", "{missing}"], "--text {missing}", ONE_LINE),
    ("word2vec", ["--text", "{empty}"], "--text {empty} is empty", ONE_LINE),
    ("word2vec", ["--text", "{blank}"], "{blank} holds no words", ONE_LINE),
    ("word2vec", ["--text", "{dir}"], "--text {dir} is a directory", ONE_LINE),
    ("word2vec", ["--data-dir", "{missing}"], "--data-dir {missing}", ONE_LINE),
    ("word2vec", ["--data-dir", "{dir}"], "{dir}/ptb/ptb.train.txt", ONE_LINE),
    ("word2vec", ["--text", "{file}", "--out", "{file}"], "--out {file}", ONE_LINE),
    # translate
    ("translate", ["--steps", "0"], "argument --steps", ARGPARSE),
    ("translate", ["--batch-size", "0"], "argument --batch-size", ARGPARSE),
    ("translate", ["--beam", "0"], "argument --beam", ARGPARSE),
    ("translate", ["--hidden", "0"], "argument --hidden", ARGPARSE),
    ("translate", ["--num-examples", "0"], "argument --num-examples", ARGPARSE),
    ("translate", ["--columns", "0,-1"], "--columns", ARGPARSE),
    ("translate", ["--attention", "bahdanau,magic"], "--attention", ARGPARSE),
    ("translate", ["--task", "{missing}"], "--task {missing}", ONE_LINE),
    ("translate", ["--task", "{empty}"], "--task {empty} is empty", ONE_LINE),
    ("translate", ["--out", "{file}"], "--out {file}", ONE_LINE),
    ("translate", ["--cell", "transformer", "--num-examples", "40", "--out", "{dir}/t"],
     "'transformer'", ONE_LINE),
    # gradient_flow
    ("gradient_flow", ["--steps", "0"], "argument --steps", ARGPARSE),
    ("gradient_flow", ["--batch", "0"], "argument --batch", ARGPARSE),
    ("gradient_flow", ["--seq-len", "0"], "argument --seq-len", ARGPARSE),
    ("gradient_flow", ["--clip-lr", "0"], "argument --clip-lr", ARGPARSE),
    ("gradient_flow", ["--radii", "0.5,x"], "argument --radii", ARGPARSE),
    ("gradient_flow", ["--radii", "0,1"], "argument --radii", ARGPARSE),
    ("gradient_flow", ["--models", "rnn,transformer"], "--models", ARGPARSE),
    ("gradient_flow", ["--out", "{file}"], "--out {file}", ONE_LINE),
    # hidden_states
    ("hidden_states", ["--steps", "0"], "argument --steps", ARGPARSE),
    ("hidden_states", ["--batch", "0"], "argument --batch", ARGPARSE),
    ("hidden_states", ["--valid-fraction", "1.5"], "--valid-fraction", ARGPARSE),
    ("hidden_states", ["--arch", "transformer"], "--arch", ARGPARSE),
    ("hidden_states", ["--layer", "3"], "--layer 3", ARGPARSE),
    ("hidden_states", ["--text", "{missing}"], "--text", ONE_LINE),
    ("hidden_states", ["--text", "{empty}"], "--text: empty file", ONE_LINE),
    ("hidden_states", ["--out", "{file}"], "--out {file}", ONE_LINE),
]

#: The fixture that makes each run directory of the table.
_FIXTURE_OF = {"run": "runs", "edited_config": "runs", "edited_model": "runs",
               "garbage_model": "runs", "junk_checkpoint": "runs",
               "tcn_mismatch": "comparisons", "memory_mismatch": "comparisons"}


def _fill(text: str, mapping: dict[str, Path]) -> str:
    for name, path in mapping.items():
        text = text.replace("{" + name + "}", str(path))
    return text


def _case_id(case) -> str:
    script, argv, _, _ = case
    return f"{script}:{' '.join(argv)}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_command_line_exits_2_with_one_line(case, paths, request, capsys):
    script, argv, message, kind = case
    mapping = dict(paths)
    for name, fixture in _FIXTURE_OF.items():
        if "{" + name + "}" in " ".join(argv) + message:
            mapping.update(request.getfixturevalue(fixture))
    argv, message = [_fill(a, mapping) for a in argv], _fill(message, mapping)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        cli.run_main(SCRIPTS[script].main, argv)
    err = capsys.readouterr().err
    assert exc.value.code == cli.EXIT_USER_ERROR, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    if kind == ONE_LINE:
        assert len(lines) == 1 and lines[0].startswith("error: "), err
    else:
        assert ": error: " in lines[-1], err
    assert message in lines[-1], err


def test_the_table_covers_every_script_and_enough_cases():
    assert len(CASES) >= 40
    assert {c[0] for c in CASES} == set(SCRIPTS)
    assert {"char_lm sample", "char_lm evaluate"} <= COVERED
    assert set(SCRIPTS) <= COVERED
    for name in SCRIPTS:  # every script's command line goes through run_main
        assert "run_main(main)" in (EXPERIMENTS / f"{name}.py").read_text(), name


# ---------------------------------------------------------------------------------------------
# run_main itself


def test_run_main_debug_reraises_and_non_finite_exits_1(monkeypatch, capsys):
    def bad(argv):
        raise ValueError(f"argv={argv} is\nbad")

    with pytest.raises(SystemExit) as exc:
        cli.run_main(bad, ["--x"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: argv=['--x'] is bad\n"
    with pytest.raises(ValueError, match=r"argv=\['--x'\]"):  # --debug is removed from argv
        cli.run_main(bad, ["--x", "--debug"])
    monkeypatch.setenv(cli.DEBUG_ENV, "1")
    with pytest.raises(ValueError):
        cli.run_main(bad, [])
    monkeypatch.delenv(cli.DEBUG_ENV)

    def diverges(argv):
        raise NonFiniteLossError(7, float("nan"))

    with pytest.raises(SystemExit) as exc:
        cli.run_main(diverges, [])
    assert exc.value.code == cli.EXIT_NON_FINITE
    assert "at step 7" in capsys.readouterr().err

    def bug(argv):
        raise KeyError("not a user error")

    with pytest.raises(KeyError):  # a bug keeps its traceback
        cli.run_main(bug, [])
    assert cli.run_main(lambda argv: argv, ["a", "--debug"]) == ["a"]


def test_argparse_types():
    import argparse

    assert cli.positive_int("3") == 3 and cli.non_negative_int("0") == 0
    assert cli.positive_float("1e-3") == 1e-3 and cli.fraction("0") == 0.0
    assert cli.comma_list(cli.positive_int)("1, 2,,3") == [1, 2, 3]
    for fn, text in ((cli.positive_int, "0"), (cli.positive_int, "1.5"),
                     (cli.non_negative_int, "-1"), (cli.positive_float, "nan"),
                     (cli.positive_float, "inf"), (cli.non_negative_float, "-0.1"),
                     (cli.fraction, "1"), (cli.comma_list(cli.positive_float), "1,-2")):
        with pytest.raises(argparse.ArgumentTypeError):
            fn(text)


# ---------------------------------------------------------------------------------------------
# Training and checkpoint functions


def _loss(params, batch, key, train):
    return jnp.sum(params["w"] ** 2) + jnp.sum(params["b"]), {}


def _params(w_shape=(3, 4), extra_leaf=False):
    p = {"w": jnp.ones(w_shape), "b": jnp.zeros(4)}
    if extra_leaf:
        p["c"] = jnp.zeros(2)
    return p


@pytest.fixture(scope="module")
def fit_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fit") / "run"
    fit(params=_params(), loss_fn=_loss, optimizer=optax.adam(1e-2),
        train_batches=lambda i: None, num_steps=2, run_dir=run, checkpoint_every=1,
        progress=False)
    return run


def _fit(run_dir, params=None, **kw):
    kw = {"num_steps": 3, "resume": True, **kw}
    return fit(params=_params() if params is None else params, loss_fn=_loss,
               optimizer=optax.adam(1e-2), train_batches=lambda i: None, run_dir=run_dir,
               progress=False, **kw)


def _like(params):
    return jax.eval_shape(lambda: TrainState.create(params, optax.adam(1e-2), 0))


def _damaged(fit_run, name, damage):
    dst = fit_run.parent / name
    if not dst.exists():
        shutil.copytree(fit_run, dst)
        damage(dst)
    return dst


def test_fit_rejects_bad_arguments(tmp_path, paths):
    with pytest.raises(ValueError, match="num_steps=-1"):
        _fit(None, num_steps=-1, resume=False)
    with pytest.raises(ValueError, match="log_every=0"):
        _fit(None, log_every=0, resume=False)
    with pytest.raises(ValueError, match="resume=True needs a run_dir"):
        _fit(None)
    with pytest.raises(NotADirectoryError, match=str(paths["file"])):
        _fit(paths["file"])


def test_fit_resume_with_other_shapes_names_the_directory_and_path(fit_run):
    with pytest.raises(CheckpointError) as err:
        _fit(fit_run, params=_params((3, 5)))
    text = str(err.value)
    assert str(fit_run / "checkpoints" / "2") in text
    assert "params.w has shape (3, 4) in the checkpoint but (3, 5)" in text
    with pytest.raises(CheckpointError, match=r"params\.c \(shape \(2,\)\) is not in the "):
        _fit(fit_run, params=_params(extra_leaf=True))
    with pytest.raises(ValueError, match="past num_steps=1"):
        _fit(fit_run, num_steps=1)


def test_fit_resume_from_damaged_checkpoints(fit_run):
    def junk_step(d):
        step = d / "checkpoints" / "2"
        shutil.rmtree(step)
        step.mkdir()
        (step / "junk").write_text("x")

    def garbage_metadata(d):
        (d / "checkpoints" / "2" / "default" / "_METADATA").write_text("garbage{")

    def file_not_dir(d):
        shutil.rmtree(d / "checkpoints")
        (d / "checkpoints").write_text("x")

    run = _damaged(fit_run, "junk_step", junk_step)
    with pytest.raises(CheckpointError, match=f"{run}/checkpoints/2 is not a readable orbax"):
        _fit(run)
    run = _damaged(fit_run, "garbage_metadata", garbage_metadata)
    with pytest.raises(CheckpointError, match=f"{run}/checkpoints/2 is not a readable orbax"):
        _fit(run)
    run = _damaged(fit_run, "file_not_dir", file_not_dir)
    with pytest.raises(NotADirectoryError, match=f"{run}/checkpoints is a file"):
        _fit(run)
    with pytest.raises(NotADirectoryError, match=f"{run}/checkpoints is a file"):
        latest_step(run)


def test_restore_checkpoint_errors(fit_run, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nope")):
        restore_checkpoint(tmp_path / "nope", _like(_params()))
    with pytest.raises(FileNotFoundError, match="holds no checkpoint"):
        restore_checkpoint(tmp_path, _like(_params()))
    with pytest.raises(FileNotFoundError, match=r"step=9 .*saved steps: \[1, 2\]"):
        restore_checkpoint(fit_run, _like(_params()), step=9)
    with pytest.raises(CheckpointError, match=r"params\.w has shape \(3, 4\) in the checkpoint "
                                              r"but \(2, 4\)"):
        restore_checkpoint(fit_run, _like(_params((2, 4))))
    state = restore_checkpoint(fit_run, _like(_params()))
    assert int(state.step) == 2
    # the same check without restoring (scripts run it before they write anything)
    assert check_checkpoint(fit_run, _like(_params())) == 2
    assert check_checkpoint(tmp_path, _like(_params())) is None
    with pytest.raises(CheckpointError, match=rf"{fit_run}/checkpoints/1 does not match .*"
                                              r"params\.w has shape"):
        check_checkpoint(fit_run, _like(_params((2, 4))), step=1)


def test_fit_task_and_optimizer_arguments(paths):
    from seqjax.data import get_task
    from seqjax.models import SequenceModel

    task = get_task("adding", seq_len=5, eval_size=4)
    model = SequenceModel("rnn", task.input_size, task.output_size, 4)
    with pytest.raises(ValueError, match="num_steps=-2"):  # rejected before params are used
        fit_task(model, task, params=_params(), optimizer=optax.sgd(0.1), batch_size=2,
                 num_steps=-2, run_dir=None)
    with pytest.raises(ValueError, match="unknown optimizer 'adamm'"):
        make_optimizer("adamm", 1e-3)
    with pytest.raises(ValueError, match="clip_norm=0"):
        make_optimizer("adam", 1e-3, clip_norm=0)
    with pytest.raises(ValueError, match="schedule='cosine' needs total_steps"):
        make_schedule(1e-3, "cosine")


# ---------------------------------------------------------------------------------------------
# samples.txt after --resume equals an uninterrupted run's


def test_samples_after_resume_equal_an_uninterrupted_run(lm_run):
    """The run is cut after writing step 2's sample but before its checkpoint: --resume redoes
    step 2 and must not write its sample twice."""
    cut = _copy_run(lm_run, "cut")
    shutil.rmtree(cut / "checkpoints" / "2")
    assert latest_step(cut) == 1 and "=== step 2 " in (cut / "samples.txt").read_text()
    char_lm.main(["--out", str(cut), "--resume", "--no-progress"])
    full = (lm_run / "samples.txt").read_text()
    assert full.count("=== step") == 2
    assert (cut / "samples.txt").read_text() == full
    assert json.loads((cut / "results.json").read_text())["test_bpc"] == pytest.approx(
        json.loads((lm_run / "results.json").read_text())["test_bpc"], abs=0)
    _, p_full, _, _ = char_lm.load_run(lm_run)
    _, p_cut, _, _ = char_lm.load_run(cut)
    for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_cut)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ---------------------------------------------------------------------------------------------
# The real command line: one line, no traceback (a process each: seconds of jax import).


def _python(*argv, env=None):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def test_command_line_prints_one_line_and_exits_2(paths):
    res = _python(str(EXPERIMENTS / "char_lm.py"), "--corpus", str(paths["small"]), "--out",
                  str(paths["file"]))
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [
        f"error: --out {paths['file']} is an existing file; it must be a directory"]
    res = _python(str(EXPERIMENTS / "tcn_vs_rnn.py"), "--resume", str(paths["missing"]))
    assert res.returncode == 2, res.stderr
    assert res.stderr.splitlines() == [f"error: --resume {paths['missing']}: no such directory"]


def test_command_line_debug_shows_the_traceback(paths):
    res = _python(str(EXPERIMENTS / "word2vec.py"), "--text", str(paths["missing"]), "--debug")
    assert res.returncode == 1 and "Traceback" in res.stderr
    assert f"FileNotFoundError: --text {paths['missing']}: no such file" in res.stderr


def test_tune_allocator_applies_once_and_respects_opt_outs():
    """``run_main``'s malloc tuning (``seqjax.cli.tune_allocator``), in fresh processes: applied
    on glibc, skipped with ``SEQJAX_TUNE_MALLOC=0`` or where the user set ``MALLOC_*``."""
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc only")
    code = "from seqjax.cli import tune_allocator; print(tune_allocator())"
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MALLOC_") and k != "SEQJAX_TUNE_MALLOC"}
    for extra, want in (({}, "True"), ({"SEQJAX_TUNE_MALLOC": "0"}, "False"),
                        ({"MALLOC_ARENA_MAX": "4"}, "False")):
        out = subprocess.run([sys.executable, "-c", code], env={**base, **extra},
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == want, (extra, out)
