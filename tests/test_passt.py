"""passt mode's setup: the socket path, its mode, -F, and how the mode is chosen."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from pasta_net import cli, passt
from pasta_net.launch import StartupError


@pytest.fixture
def template(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Default paths under tmp_path instead of /tmp."""
    pattern = str(tmp_path / "passt_{}.socket")
    monkeypatch.setattr(passt, "SOCKET_TEMPLATE", pattern)
    return pattern


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for sock in opened:
        sock.close()


def test_default_path_is_the_first_free_one_and_owner_only(
        template: str, sockets: list[socket.socket]) -> None:
    first, path = passt.bind_socket(None)
    sockets.append(first)
    assert path == template.format(1)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    second, path = passt.bind_socket(None)  # 1 is served now
    sockets.append(second)
    assert path == template.format(2)


def test_a_stale_socket_is_replaced(template: str, sockets: list[socket.socket]) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(template.format(1))
    stale.close()  # the file stays, nobody answers
    listener, path = passt.bind_socket(None)
    sockets.append(listener)
    assert path == template.format(1)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    client.close()


def test_explicit_path_in_use_is_an_error(tmp_path: Path, sockets: list[socket.socket]) -> None:
    listener, path = passt.bind_socket(str(tmp_path / "vm.socket"))
    sockets.append(listener)
    with pytest.raises(StartupError, match="already in use"):
        passt.bind_socket(path)


def test_a_file_of_another_kind_is_never_removed(tmp_path: Path) -> None:
    path = tmp_path / "precious"
    path.write_text("data")
    with pytest.raises(StartupError, match="Unable to bind socket"):
        passt.bind_socket(str(path))
    assert path.read_text() == "data"


def test_fd_must_be_a_stream_socket(tmp_path: Path) -> None:
    with pytest.raises(StartupError, match="Invalid --fd"):
        passt._adopt(987)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(StartupError, match="not a stream socket"):
            passt._adopt(a.fileno())
    finally:
        a.close()
        b.close()


def test_qemu_hint_names_the_path() -> None:
    assert ("-netdev stream,id=s,server=off,addr.type=unix,addr.path=/tmp/passt_1.socket"
            in passt.qemu_hint("/tmp/passt_1.socket"))


@pytest.mark.parametrize("argv", [["passt-net", "-h"], ["pasta-net", "--passt", "-h"],
                                  ["/usr/bin/passt", "--help"]])
def test_passt_mode_by_name_or_leading_switch(argv: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(argv) == 0
    assert "--one-off" in capsys.readouterr().out


def test_passt_switch_only_leads(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["pasta-net", "-f", "--passt"]) == 1
    assert "unrecognized option '--passt'" in capsys.readouterr().err
