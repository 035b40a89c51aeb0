"""``python -m flows.prefect_server PARENT_PID UVICORN_ARGS...``: the temporary Prefect API of
``prefect_api``, which stops itself when the process that started it is gone.

That process stops the server when its runs are closed; but it runs the server in a session of
its own (so a terminal's Ctrl-C reaches it only through that process), so a SIGKILL of the parent
used to leave the server running for good, holding a port and ~200 MB.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

CHECK_SECONDS = 1.0


def exit_when_orphaned(parent: int, check_seconds: float = CHECK_SECONDS) -> None:
    """SIGTERM to this process (uvicorn's graceful stop) once its parent is no longer ``parent``:
    an orphan is handed to init or a subreaper, so ``getppid`` changes."""
    while os.getppid() == parent:
        time.sleep(check_seconds)
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    import uvicorn

    parent, arguments = int(sys.argv[1]), sys.argv[2:]
    threading.Thread(target=exit_when_orphaned, args=(parent,), name="parent-watch", daemon=True).start()
    sys.argv = ["uvicorn", *arguments]
    uvicorn.main()


if __name__ == "__main__":
    main()
