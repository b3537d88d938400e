"""The TCN-vs-RNN comparison: models learn the adding problem, the script writes what it
promises, resumes, and rejects bad input with useful errors."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from seqjax.data import get_task
from seqjax.models import SequenceModel, hidden_for_params, param_count
from seqjax.train import fit, make_optimizer, make_task_evaluator, task_loss_fn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
import tcn_vs_rnn  # noqa: E402


@pytest.mark.parametrize("model,lr,batch", [
    (SequenceModel("tcn", 2, 1, 16, num_layers=2, kernel_size=10, readout_std=0.01), 4e-3, 32),
    (SequenceModel("lstm", 2, 1, 32), 1e-2, 64),
])
def test_adding_problem_learned_below_005_at_T50(model, lr, batch):
    """Far below the trivial baseline MSE of 1/6 within a small step budget."""
    task = get_task("adding", seq_len=50, eval_size=512)
    steps = 800
    if model.arch == "tcn":
        assert model.receptive_field >= 50
    result = fit(params=model.init(jax.random.PRNGKey(0)), loss_fn=task_loss_fn(model, task),
                 optimizer=make_optimizer("adam", lr, clip_norm=1.0),
                 train_batches=lambda i: task.train_batch(i, batch), num_steps=steps,
                 run_dir=None, progress=False)
    mse = make_task_evaluator(model, task, 256)(result.state.params, "test")["mse"]
    assert mse < 0.05, f"{model.arch} test MSE {mse:.4f} not below 0.05 after {steps} steps"
    assert task.baseline == pytest.approx(1 / 6)


def test_hidden_for_params_matches_budget():
    tcn = SequenceModel("tcn", 2, 1, 24, num_layers=5, kernel_size=6)
    budget = param_count(tcn.init(jax.random.PRNGKey(0)))
    for arch in ("lstm", "gru", "rnn"):
        h = hidden_for_params(SequenceModel(arch, 2, 1, 8), budget)
        n = param_count(SequenceModel(arch, 2, 1, h).init(jax.random.PRNGKey(0)))
        n_next = param_count(SequenceModel(arch, 2, 1, h + 1).init(jax.random.PRNGKey(0)))
        assert abs(n - budget) <= abs(n_next - n), (arch, h, n, budget)


def test_script_end_to_end_and_resume(tmp_path, capsys):
    argv = ["--task", "adding", "--seq-len", "20", "--steps", "30", "--eval-every", "10",
            "--models", "tcn,gru", "--out", str(tmp_path), "--no-progress"]
    results = tcn_vs_rnn.main(argv)
    run_dir = next((tmp_path / "adding").iterdir())
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["task"] == "adding" and saved["metric"] == "mse"
    assert saved["lower_is_better"] is True and saved["baseline"] == pytest.approx(1 / 6)
    # --steps cut the quick preset's 3,000 steps: both are recorded (Table 1's budget rows)
    assert saved["steps"] == 30 and saved["preset_steps"] == tcn_vs_rnn.QUICK["adding"].steps
    for name in ("tcn", "gru"):
        entry = saved["models"][name]
        assert set(entry) >= {"test_metric", "params", "wall_s", "steps_per_s"}
        assert np.isfinite(entry["test_metric"]) and entry["params"] > 0
    # Roughly equal parameter counts (within the granularity of one hidden unit).
    p_tcn, p_gru = (saved["models"][m]["params"] for m in ("tcn", "gru"))
    assert abs(p_gru - p_tcn) / p_tcn < 0.1
    assert (run_dir / "curves.png").stat().st_size > 1000
    assert "| tcn |" in (run_dir / "table.md").read_text()
    assert "| gru |" in capsys.readouterr().out

    # --resume on a finished comparison restores every model at its last step: same numbers.
    again = tcn_vs_rnn.main(["--resume", str(run_dir)])
    for name in ("tcn", "gru"):
        assert again["models"][name]["test_metric"] == results["models"][name]["test_metric"]

    # --jobs 2: the two models in two spawned one-thread processes, to the same numbers.
    both = tcn_vs_rnn.main(argv[:-3] + ["--out", str(tmp_path / "jobs"), "--jobs", "2"])
    assert list(both["models"]) == ["tcn", "gru"] and both["jobs"] == 2
    for name in ("tcn", "gru"):
        assert both["models"][name]["test_metric"] == results["models"][name]["test_metric"]


def test_bad_input():
    with pytest.raises(SystemExit):
        tcn_vs_rnn.parse_args(["--task", "sorting"])
    with pytest.raises(SystemExit):
        tcn_vs_rnn.parse_args(["--models", "tcn,transformer"])
    with pytest.raises(ValueError, match="unknown task 'sorting'|'sorting'"):
        get_task("sorting")
    with pytest.raises(ValueError, match="seq_len"):
        get_task("adding", seq_len=1)
    with pytest.raises(FileNotFoundError, match="JSB_Chorales.mat"):
        get_task("jsb", data_dir="/nonexistent-dir")
    with pytest.raises(FileNotFoundError, match="ptb.train.txt"):
        get_task("ptb-char", data_dir="/nonexistent-dir")
    with pytest.raises(ValueError, match="arch='transformer'"):
        SequenceModel("transformer", 2, 1, 8)


def test_every_task_has_a_quick_preset():
    from seqjax.data import TASK_NAMES

    for name in TASK_NAMES:
        assert isinstance(tcn_vs_rnn.preset_for(name, "quick"), tcn_vs_rnn.Preset), name


@pytest.mark.parametrize("task", ["copy", "digits", "jsb", "ptb-char", "ntm-copy",
                                  "repeat-copy"])
def test_quick_preset_builds_for_every_task_family(task, data_dir):
    preset = tcn_vs_rnn.preset_for(task, "quick")
    t = get_task(task, data_dir=data_dir, seq_len=preset.seq_len, **dict(preset.task_kwargs))
    models = tcn_vs_rnn.build_models(t, preset, ["tcn", "lstm"], "scan")
    batch = t.train_batch(0, 2)
    for m in models.values():
        out = m.apply(m.init(jax.random.PRNGKey(0)), batch.inputs, batch.lengths)
        assert out.shape[:2] == batch.inputs.shape[:2] and out.shape[-1] == t.output_size
        if m.arch == "tcn" and hasattr(t, "max_steps"):  # sees a whole algorithmic sequence
            assert m.receptive_field >= t.max_steps
        assert np.isfinite(float(task_loss_fn(m, t)(m.init(jax.random.PRNGKey(0)), batch,
                                                     None, False)[0]))


def test_set_changes_one_model_and_reaches_its_cell():
    args = tcn_vs_rnn.parse_args(["--task", "adding", "--preset", "paper", "--set",
                                  "lstm.lr=1e-3", "--set", "lstm.clip=1", "--set",
                                  "lstm.chrono=600"])
    assert args.overrides == (("lstm", "lr", 1e-3), ("lstm", "clip", 1.0),
                              ("lstm", "chrono", 600))
    preset = tcn_vs_rnn.resolve_preset(args)
    lstm, gru = preset.arch("lstm"), preset.arch("gru")
    assert (lstm.lr, lstm.clip, lstm.cell_options) == (1e-3, 1.0, (("chrono", 600),))
    paper = tcn_vs_rnn.PAPER["adding"].rnn
    assert (gru.lr, gru.clip, gru.cell_options) == (paper.lr, paper.clip, ())
    task = get_task("adding", seq_len=600)
    models = tcn_vs_rnn.build_models(task, preset, ["lstm", "gru"], "scan")
    assert models["lstm"].encoder.cells[0].chrono == 600
    assert models["gru"].hidden_size != 0 and models["gru"].cell_options == ()


def test_task_arg_reaches_the_task_over_the_preset():
    """``--task-arg markers=anywhere`` draws locuslab's markers (both may fall in one half);
    the preset's own task arguments stay unless named."""
    args = tcn_vs_rnn.parse_args(["--task", "jsb", "--preset", "paper", "--task-arg",
                                  "pad_multiple=8", "--task-arg", "max_len=none"])
    assert dict(tcn_vs_rnn.resolve_preset(args).task_kwargs) == {"pad_multiple": 8,
                                                                 "max_len": None}

    def both_in_one_half(extra):
        args = tcn_vs_rnn.parse_args(["--task", "adding", "--preset", "paper", *extra])
        preset = tcn_vs_rnn.resolve_preset(args)
        task = get_task("adding", seq_len=preset.seq_len, **dict(preset.task_kwargs))
        marks = task.train_batch(0, 256).inputs[:, :, 1]
        first, last = np.argmax(marks, 1), marks.shape[1] - 1 - np.argmax(marks[:, ::-1], 1)
        return np.mean((first >= 300) | (last < 300))

    assert both_in_one_half([]) == 0.0  # the classic draw: one marker in each half
    assert 0.3 < both_in_one_half(["--task-arg", "markers=anywhere"]) < 0.7  # 1/2 expected
    with pytest.raises(SystemExit):
        tcn_vs_rnn.parse_args(["--task-arg", "markers"])


def test_linear_cells_run_as_residual_blocks_and_the_lru_gets_its_glu():
    preset = tcn_vs_rnn.preset_for("adding", "quick")
    models = tcn_vs_rnn.build_models(get_task("adding", seq_len=20), preset,
                                     ["tcn", "mingru", "lru"], "scan")
    assert models["mingru"].residual and not models["mingru"].glu
    assert models["lru"].residual and models["lru"].glu
    budget = param_count(models["tcn"].init(jax.random.PRNGKey(0)))
    for name in ("mingru", "lru"):  # parameter-matched, GLU included
        n = param_count(models[name].init(jax.random.PRNGKey(0)))
        assert abs(n - budget) / budget < 0.05, (name, n, budget)


def test_tuned_preset_is_the_paper_preset_with_the_chosen_recurrent_settings():
    tuned, paper = (tcn_vs_rnn.preset_for("adding", n) for n in ("tuned", "paper"))
    lstm = tuned.arch("lstm")
    assert (lstm.lr, lstm.clip, lstm.cell_options) == (1e-3, 1.0, (("chrono", 600),))
    assert tuned.arch("tcn") == paper.arch("tcn") and tuned.steps == paper.steps
    jsb, jsb_paper = (tcn_vs_rnn.preset_for("jsb", n) for n in ("tuned", "paper"))
    assert (jsb.arch("rnn").dropout, jsb.arch("rnn").lr) == (0.5, 3e-4)
    assert jsb.arch("lstm") == jsb_paper.arch("lstm") and jsb.arch("gru") == jsb_paper.arch("gru")
    with pytest.raises(ValueError, match="no tuned preset for task 'ptb-char'"):
        tcn_vs_rnn.preset_for("ptb-char", "tuned")
