"""The committed cffi module matches its declarations (``pasta_net/_linux_build.py``)."""

from __future__ import annotations

from pathlib import Path

from pasta_net import _linux_build, linux


def test_generated_module_is_current(tmp_path: Path) -> None:
    fresh = tmp_path / "_linux_ffi.py"
    _linux_build.generate(fresh)
    assert fresh.read_text() == _linux_build.MODULE.read_text(), (
        "stale: run python -m pasta_net._linux_build")


def test_declarations_resolve_in_libc() -> None:
    """Every function of the declarations is found in the interpreter's libc, and the
    ifreq layout is the kernel's (16-byte name + 24-byte union)."""
    for name in ("setns", "unshare", "ioctl", "prctl", "capget", "capset"):
        assert callable(getattr(linux._libc, name))
    assert linux._ffi.sizeof("struct ifreq") == 40
