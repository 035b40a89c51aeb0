"""The library: small modules with one job each (docs/architecture.md)."""

import os as _os

if _os.environ.get("PIPELINE_QUIET_TENSORFLOW") == "1":  # a quiet parent's child (pipeline/quiet.py)
    from pipeline.quiet import quiet_tensorflow_startup

    quiet_tensorflow_startup()
