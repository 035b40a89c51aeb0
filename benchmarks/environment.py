"""What a benchmark ran on: the CPU, its cores, Python and the versions that shape the figures."""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGES = ("tensorflow-cpu", "keras", "mlflow", "prefect", "optuna", "scikit-learn", "numpy")


def environment() -> dict[str, Any]:
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        cpu = names[0] if names else cpu
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "versions": versions,
        # 1/5/15-minute load when the benchmark started: others' work on a shared machine skews timings
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


def versions_line(env: dict[str, Any]) -> str:
    return f"Python {env['python']}, " + ", ".join(f"{k} {v}" for k, v in env["versions"].items())


def write_results(results: dict[str, Any], markdown: str, out: Path, name: str, quick: bool) -> None:
    """``out/<name>[-quick].json`` and ``.md``, and the Markdown on stdout: every benchmark's ending."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    stem = name + ("-quick" if quick else "")
    (out / f"{stem}.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
