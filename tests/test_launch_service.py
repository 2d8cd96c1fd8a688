"""How the service runs, without a namespace: errors out of trio, the log file.

trio ≥ 0.25 wraps errors raised in a nursery in ExceptionGroups; ``run_trio`` asks for
that on every version and unwraps a single error, so ``pasta-net: <message>`` stays the
whole output."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from pasta_net.launch import CappedLog, StartupError, run_trio


async def fail_in_nursery(*errors: Exception) -> None:
    async def fail(error: Exception) -> None:
        raise error

    async with trio.open_nursery() as nursery:
        for error in errors:
            nursery.start_soon(fail, error)


def test_a_single_error_is_raised_as_itself() -> None:
    error = StartupError("Failed to bind port 8080")
    with pytest.raises(StartupError) as raised:
        run_trio(fail_in_nursery, error)
    assert raised.value is error


def test_several_errors_stay_a_group() -> None:
    with pytest.raises(BaseExceptionGroup) as raised:
        run_trio(fail_in_nursery, StartupError("one"), OSError("two"))
    assert {str(e) for e in raised.value.exceptions} == {"one", "two"}


def test_the_log_file_stays_under_its_size(tmp_path: Path) -> None:
    """--log-size: the file opened once is emptied when the next record would pass the
    size (a reopen at rollover fails once root has become nobody)."""
    path = tmp_path / "log"
    handler = CappedLog(str(path), 4096)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("test-capped-log")
    logger.addHandler(handler)
    try:
        for n in range(1000):
            logger.warning("record %04d %s", n, "x" * 50)
            assert path.stat().st_size <= 4096
        assert path.read_text().splitlines()[-1].startswith("record 0999")
    finally:
        logger.removeHandler(handler)
        handler.close()
