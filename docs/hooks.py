"""MkDocs hook: generates the page ``results.md`` (in memory, not in the source tree).

The tables come from the ``results.json`` files under ``docs/results/``.

Every number on the results page comes from a run of ``experiments/tcn_vs_rnn.py``
(``docs/results_table.py`` turns a run directory into a table); nothing is typed by hand.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def _results_table():
    spec = importlib.util.spec_from_file_location("results_table", DOCS / "results_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def results_page() -> str:
    """The markdown of the results page."""
    rt = _results_table()
    parts = [
        "# Results",
        "",
        "Generated at docs build time by `docs/hooks.py` from the `results.json` files under "
        "`docs/results/`; each is copied unchanged from a run directory that "
        "`experiments/tcn_vs_rnn.py` wrote (its `run.json` beside it records the arguments). "
        "Regenerate a table with `python docs/results_table.py RUN_DIR`.",
        "",
    ]
    for run in sorted(p.parent for p in (DOCS / "results").glob("*/results.json")):
        run_json = run / "run.json"
        argv = json.loads(run_json.read_text())["argv"] if run_json.exists() else None
        parts.append(rt.table(rt.load(run), heading_level=2))
        if argv is not None:
            cmd = " ".join(["python experiments/tcn_vs_rnn.py", *argv]).strip()
            parts.append(f"Command: `{cmd}` (from `{run.name}/run.json`).\n")
        if (run / "curves.png").exists():
            parts.append(f"![validation curves]({run.relative_to(DOCS).as_posix()}/curves.png)\n")
    return "\n".join(parts)


def on_files(files, config, **kwargs):  # noqa: ARG001 - MkDocs hook signature
    from mkdocs.structure.files import File

    files.append(File.generated(config, "results.md", content=results_page()))
    return files
