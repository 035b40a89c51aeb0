"""Whether the process that owns a trial or run is gone: told at once only where it can be."""

from __future__ import annotations

import subprocess
import sys

from pipeline.liveness import here, is_gone


def _dead_owner() -> dict:
    """``here()`` of a process that has exited."""
    child = subprocess.run(
        [sys.executable, "-c", "import json; from pipeline.liveness import here; print(json.dumps(here()))"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    import json

    return json.loads(child.stdout)


def test_a_process_that_exited_on_this_machine_is_gone_and_a_live_one_is_not():
    assert is_gone(_dead_owner())
    assert not is_gone(here())
    assert not is_gone({k: str(v) for k, v in here().items()})  # as tags and attributes store them


def test_an_owner_in_another_pid_namespace_or_machine_is_left_to_its_heartbeat():
    """Containers with host networking share the host name, but each numbers its own processes
    (every worker container's process is pid 1): a pid seen from here says nothing about it."""
    dead = _dead_owner()
    assert not is_gone(dead | {"pid_namespace": "4026531836-elsewhere"})
    assert not is_gone(dead | {"host": "another-machine"})
    assert not is_gone({k: v for k, v in dead.items() if k != "pid_namespace"})  # written before it existed
