"""What produced a run: code version, packages, device, flags; written into every run directory.

A result without its provenance cannot be reproduced or compared: :func:`run_provenance` gathers
the git commit (and whether the tree had uncommitted changes), the versions of the packages that
change numbers, the device, the XLA flags and the host, as a JSON-ready dict.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import jax

_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "scipy")
_REPO = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def run_provenance() -> dict:
    """The provenance of a run started now, as a JSON-ready dict.

    Keys: ``git_commit`` (``None`` outside a git checkout), ``git_dirty`` (uncommitted changes
    to tracked files), ``packages`` (name -> version), ``python``, ``platform``, ``host``,
    ``cpu_count``, ``devices`` (``"<count> x <platform> <kind>"``), ``xla_flags``,
    ``jax_platforms`` and ``started`` (UTC, ISO 8601).
    """
    devices = jax.devices()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "packages": {name: _version(name) for name in _PACKAGES},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "cpu_count": os.cpu_count(),
        "devices": f"{len(devices)} x {devices[0].platform} {devices[0].device_kind}",
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "jax_platforms": os.environ.get("JAX_PLATFORMS", ""),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
