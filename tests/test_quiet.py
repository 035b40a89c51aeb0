"""A quiet terminal: TensorFlow's native start-up notices never reach it unless --verbose asks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SENTIMENT = str(Path(sys.executable).parent / "sentiment")
NOTICES = ("absl::InitializeLog", "oneDNN custom operations", "cpu_feature_guard")


def test_a_command_that_loads_tensorflow_prints_its_output_and_no_native_notice(tmp_path):
    done = subprocess.run(
        [SENTIMENT, "presets"], capture_output=True, text=True, timeout=300, env={"SENTIMENT_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "notebook-lstm" in done.stdout
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOTICES)], done.stderr


def test_only_the_known_notices_are_dropped_and_a_real_error_at_import_still_shows():
    script = """
import os
from pipeline.quiet import native_notices_dropped
with native_notices_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
    os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on.\\n")
    os.write(2, b"E0000 libcudart.so: cannot open shared object file\\n")
print("done")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "done"
    assert done.stderr.strip() == "E0000 libcudart.so: cannot open shared object file"


def test_child_processes_of_a_quiet_parent_stay_quiet():
    script = "import os; os.environ['PIPELINE_QUIET_TENSORFLOW'] = '1'; import subprocess, sys; " \
        "sys.exit(subprocess.run([sys.executable, '-c', 'import pipeline, keras']).returncode)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOTICES)], done.stderr
