"""Model selection on the validation split: the parameters of the best evaluation so far.

The protocol of Bai et al. (2018) and of most sequence-model papers reports the test metric of
the parameters with the best validation metric, not of the last ones (locuslab/TCN saves the
model whenever the validation loss improves and tests that one). :class:`BestParams` keeps
them: in memory, and with a run directory on disk as ``best/<step>/`` (an orbax checkpoint of
the params) plus ``best.json`` (``{"step", "metric", "value"}``), written last and atomically so
that a run killed at any moment resumes with the same best as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from seqjax.train.checkpoint import quiet_orbax

__all__ = ["BEST_DIR", "BEST_FILE", "BestParams"]

BEST_DIR = "best"
BEST_FILE = "best.json"
_MODES = ("min", "max")


class BestParams:
    """Tracks the params of the best validation row of a run.

    Args:
      metric: the key of the validation rows to compare, e.g. ``"nll"``.
      mode: ``"min"`` (lower is better) or ``"max"``.
      run_dir: where ``best/`` and ``best.json`` go; ``None`` keeps the params in memory only.
      primary: whether this process writes the files (process 0 of a multi-process run).
    """

    def __init__(self, metric: str, mode: str, run_dir: str | os.PathLike | None,
                 primary: bool = True) -> None:
        if not isinstance(metric, str) or not metric:
            raise ValueError(f"keep_best metric={metric!r} must be a non-empty string")
        if mode not in _MODES:
            raise ValueError(f"keep_best mode={mode!r} must be 'min' or 'max'")
        self.metric, self.mode, self.primary = metric, mode, primary
        self.path = None if run_dir is None else Path(run_dir)
        self.step: int | None = None
        self.value: float | None = None
        self._params: Any = None
        if self.path is not None and (self.path / BEST_FILE).is_file():
            saved = json.loads((self.path / BEST_FILE).read_text())
            if saved.get("metric") == metric:
                self.step, self.value = int(saved["step"]), float(saved["value"])

    def better(self, value: float) -> bool:
        """Whether ``value`` beats the best so far (a NaN never does)."""
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        return value < self.value if self.mode == "min" else value > self.value

    def consider(self, step: int, params: Any, row: dict[str, float]) -> bool:
        """Keeps ``params`` if ``row[metric]`` is the best so far; returns whether it was."""
        if self.metric not in row:
            raise KeyError(f"keep_best metric {self.metric!r} is not among the validation "
                           f"metrics {sorted(row)}")
        value = float(row[self.metric])
        if not self.better(value):
            return False
        self.step, self.value = step, value
        self._params = jax.device_get(params)
        if self.path is not None and self.primary:
            self._write(step, params)
        return True

    def params(self, template: Any) -> Any:
        """The best params (``template`` gives the tree, shapes and dtypes to restore into);
        ``None`` if no validation row was seen."""
        if self._params is not None or self.step is None or self.path is None:
            return self._params
        target = self.path / BEST_DIR / str(self.step)
        with quiet_orbax():
            self._params = ocp.StandardCheckpointer().restore(
                target.absolute(), jax.tree.map(ocp.utils.to_shape_dtype_struct, template))
        return self._params

    def _write(self, step: int, params: Any) -> None:
        root = self.path / BEST_DIR
        target = root / str(step)
        if target.exists():  # a redone step after a resume: the same params, written again
            shutil.rmtree(target)
        with quiet_orbax():
            checkpointer = ocp.StandardCheckpointer()
            checkpointer.save(target.absolute(), params)
            checkpointer.wait_until_finished()
        tmp = self.path / (BEST_FILE + ".tmp")
        tmp.write_text(json.dumps({"step": step, "metric": self.metric, "value": self.value}))
        os.replace(tmp, self.path / BEST_FILE)
        for old in root.iterdir():  # only now is the previous best no longer needed
            if old.name != str(step):
                shutil.rmtree(old, ignore_errors=True)
