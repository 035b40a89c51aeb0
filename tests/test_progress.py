"""progress: plain, complete lines when the output is not a terminal (logs, CI, Prefect)."""

from __future__ import annotations

import logging

from pipeline.progress import Progress


def test_off_a_terminal_each_step_is_one_line_with_its_numbers_and_the_time_left(caplog):
    with (
        caplog.at_level(logging.INFO, logger="pipeline.progress"),
        Progress("search", 4, "trial") as progress,
    ):
        progress.update(1, {"best": 0.812345, "pruned": 0})
        progress.update(1, {"best": 0.9})  # nothing new done: no new line
        progress.update(4, {"best": 0.9, "pruned": 2})

    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 2
    assert lines[0].startswith("search: trial 1/4 best=0.8123 pruned=0 eta=")
    assert lines[1].startswith("search: trial 4/4 best=0.9 pruned=2 eta=0s")
