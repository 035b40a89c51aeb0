"""The CLI's temporary Prefect API: it serves flow runs, and it goes when its owner goes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx

_OWNER = """
import time
from prefect.settings import PREFECT_API_URL, temporary_settings
from flows.prefect_api import prefect_api
with temporary_settings(updates={PREFECT_API_URL: None}):
    with prefect_api() as url:
        print(url, flush=True)
        time.sleep(600)
"""


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_a_sigkilled_owner_takes_its_temporary_prefect_api_with_it():
    """SIGKILL leaves no cleanup to the owner: the server, in a session of its own so that a
    terminal's Ctrl-C reaches it only through the owner, must notice and stop by itself."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    owner = subprocess.Popen([sys.executable, "-c", _OWNER], stdout=subprocess.PIPE, text=True, env=env)
    try:
        url = owner.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), f"the owner printed {url!r}"
        assert _answers(url)
        owner.send_signal(signal.SIGKILL)
        owner.wait(timeout=10)
        deadline = time.monotonic() + 30
        while _answers(url) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _answers(url), "the temporary Prefect API outlived its SIGKILLed owner"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
