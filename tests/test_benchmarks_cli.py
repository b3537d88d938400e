"""Every benchmark script stops a bad number at argparse (exit 2, the flag named) instead of
a traceback from PyTorch, ``time.sleep`` or a cell constructor deep inside a run; rnn_cpu's
``--kinds`` is limited to the cells Flax and PyTorch both have."""

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"

CASES = [
    ("rnn_cpu", ["--reps", "0"], "argument --reps"),
    ("rnn_cpu", ["--T", "-3"], "argument --T"),
    ("rnn_cpu", ["--gap", "-1"], "argument --gap"),
    ("rnn_cpu", ["--kinds", "lstm,rnn"], "--kinds 'lstm,rnn'"),
    ("train_step", ["--steps", "0"], "argument --steps"),
    ("train_step", ["--threads", "0"], "argument --threads"),
    ("ab_native", ["--H", "0"], "argument --H"),
    ("native_threads", ["--gap", "x"], "argument --gap"),
    ("parallel_scan", ["--time-block", "0"], "argument --time-block"),
    ("profile_layer", ["--top", "0"], "argument --top"),
    ("memory", ["--N", "0"], "argument --N"),
    ("scaling", ["--hidden", "0"], "argument --hidden"),
    ("rnn_gpu", ["--warmup", "-1"], "argument --warmup"),
]


def _main(script: str):
    spec = importlib.util.spec_from_file_location(f"bench_{script}", BENCHMARKS / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.mark.parametrize("script,argv,message", CASES, ids=[f"{c[0]}:{' '.join(c[1])}"
                                                             for c in CASES])
def test_bad_number_exits_2_naming_the_flag(script, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        _main(script)(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_every_benchmark_is_covered_and_none_takes_a_bare_number():
    """A new script joins the table; ``type=int``/``float`` would let 0 and -1 through."""
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if "add_argument(" in p.read_text()}
    assert scripts == {c[0] for c in CASES}
    for script in scripts:
        text = (BENCHMARKS / f"{script}.py").read_text()
        assert "type=int" not in text and "type=float" not in text, script
