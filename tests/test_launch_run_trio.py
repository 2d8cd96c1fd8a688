"""``launch.run_trio``: errors raised in a nursery reach the caller as themselves.

trio ≥ 0.25 wraps them in ExceptionGroups; ``run_trio`` asks for that on every version
and unwraps a single error, so ``pasta-net: <message>`` stays the whole output."""

from __future__ import annotations

import pytest
import trio

from pasta_net.launch import StartupError, run_trio


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
