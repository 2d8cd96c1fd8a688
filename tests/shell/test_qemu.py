"""QemuStream against a socketpair standing in for qemu: framing, limits, back-pressure."""

from __future__ import annotations

import os
import select
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pasta_net.core.frames import VNET_HDR_LEN
from pasta_net.shell.qemu import MAX_FRAME, QemuStream


def wire(frame: bytes) -> bytes:
    return struct.pack("!I", len(frame)) + frame


def frame_of(size: int, seed: int = 0) -> bytes:
    return bytes((seed + i) & 0xFF for i in range(size))


def readable(fd: int, timeout: float = 1.0) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def drain(stream: QemuStream) -> list[bytes]:
    """Every frame the stream has now, copied (views die at the next read)."""
    frames: list[bytes] = []
    while readable(stream.fd, 0):
        batch = stream.read_batch()
        frames += [bytes(f) for f in batch]
        if not batch and not stream.connected:
            break
    return frames


@pytest.fixture
def pair() -> Iterator[tuple[QemuStream, socket.socket]]:
    ours, vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = QemuStream(client=ours)
    yield stream, vm
    stream.close()
    vm.close()


def test_frames_are_cut_from_one_read(pair: tuple[QemuStream, socket.socket]) -> None:
    stream, vm = pair
    frames = [frame_of(14), frame_of(1500, 1), frame_of(MAX_FRAME, 2)]
    vm.sendall(b"".join(wire(f) for f in frames))
    assert drain(stream) == frames


def test_frames_split_byte_by_byte(pair: tuple[QemuStream, socket.socket]) -> None:
    stream, vm = pair
    frames = [frame_of(60), frame_of(61, 7)]
    got: list[bytes] = []
    for byte in b"".join(wire(f) for f in frames):
        vm.send(bytes([byte]))
        assert readable(stream.fd)
        got += [bytes(f) for f in stream.read_batch()]
    assert got == frames


@settings(max_examples=50, deadline=None)
@given(sizes=st.lists(st.integers(14, 9000), min_size=1, max_size=20),
       cuts=st.lists(st.integers(1, 20000), max_size=30))
def test_any_chunking_gives_the_same_frames(sizes: list[int], cuts: list[int]) -> None:
    ours, vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = QemuStream(client=ours)
    try:
        frames = [frame_of(size, n) for n, size in enumerate(sizes)]
        data = b"".join(wire(f) for f in frames)
        got: list[bytes] = []
        pos = 0
        for cut in [*cuts, len(data)]:
            vm.sendall(data[pos : pos + cut])
            pos += cut
            got += drain(stream)
            if pos >= len(data):
                break
        assert got == frames
    finally:
        stream.close()
        vm.close()


@pytest.mark.parametrize("length", [0, 13, MAX_FRAME + 1, 0xFFFFFFFF])
def test_bad_length_closes_the_client(length: int) -> None:
    ours, vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stream = QemuStream(client=ours)
    good = frame_of(100)
    vm.sendall(wire(good) + struct.pack("!I", length) + bytes(64))
    assert readable(stream.fd)
    assert [bytes(f) for f in stream.read_batch()] == [good]
    assert not stream.connected
    assert stream.finished.is_set()  # no listener: nothing else to serve
    assert vm.recv(1) == b""  # the VM sees the connection closed
    stream.close()
    vm.close()


def test_write_strips_the_vnet_slot_and_prefixes_the_length(
        pair: tuple[QemuStream, socket.socket]) -> None:
    stream, vm = pair
    frames = [bytes(VNET_HDR_LEN) + frame_of(60), bytearray(VNET_HDR_LEN) + frame_of(1514, 3)]
    stream.write_batch([frames[0], memoryview(frames[1])])
    expected = b"".join(wire(bytes(f[VNET_HDR_LEN:])) for f in frames)
    assert vm.recv(len(expected), socket.MSG_WAITALL) == expected


def read_wire_frames(sock: socket.socket, data: bytearray) -> list[bytes]:
    """Cut complete length-prefixed frames off ``data`` (what qemu would do)."""
    frames = []
    while len(data) >= 4:
        (length,) = struct.unpack_from("!I", data)
        assert 14 <= length <= MAX_FRAME, "stream desynchronised"
        if len(data) < 4 + length:
            break
        frames.append(bytes(data[4 : 4 + length]))
        del data[: 4 + length]
    return frames


def test_refused_output_is_queued_whole_and_flushed_in_order() -> None:
    ours, vm = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    vm.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = QemuStream(client=ours)
    # The engine reuses its buffers: overwrite each after handing it over.
    buffer = bytearray(VNET_HDR_LEN + 60000)
    sent = []
    for n in range(200):
        buffer[VNET_HDR_LEN:] = frame_of(60000, n)
        stream.write_batch([buffer])
        sent.append(frame_of(60000, n))
    assert stream.drops > 0  # the bounded queue overflowed: whole frames dropped
    vm.setblocking(False)
    data = bytearray()
    got: list[bytes] = []
    for _ in range(10000):
        try:
            data += vm.recv(1 << 20)
        except BlockingIOError:
            if not readable(stream.fd, 0.2):
                break
            assert stream.read_batch() == []
        got += read_wire_frames(vm, data)
    assert not data
    assert len(got) == 200 - stream.drops
    it = iter(sent)
    assert all(frame in it for frame in got)  # a subsequence: order kept, no corruption
    stream.close()
    vm.close()


def test_listener_serves_one_client_at_a_time(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "passt.socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stream = QemuStream(listener=listener)
    first = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    first.connect(path)
    assert readable(stream.fd)
    assert stream.read_batch() == [] and stream.connected
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    second.connect(path)
    assert readable(stream.fd)
    stream.read_batch()
    assert second.recv(1) == b""  # refused: accepted and closed
    first.close()
    assert readable(stream.fd)
    stream.read_batch()
    assert not stream.connected and not stream.finished.is_set()
    third = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    third.connect(path)
    third.sendall(wire(frame_of(42)))
    assert drain(stream) == [frame_of(42)]
    for sock in (second, third):
        sock.close()
    stream.close()


def test_one_off_finishes_with_the_first_client(tmp_path: os.PathLike) -> None:
    path = os.path.join(tmp_path, "passt.socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    stream = QemuStream(listener=listener, one_off=True)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    assert readable(stream.fd)
    stream.read_batch()
    client.close()
    assert readable(stream.fd)
    stream.read_batch()
    assert stream.finished.is_set()
    stream.close()


def test_writes_without_a_client_are_dropped(tmp_path: os.PathLike) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(os.path.join(tmp_path, "s"))
    listener.listen(1)
    stream = QemuStream(listener=listener)
    stream.write_batch([bytes(VNET_HDR_LEN + 60)])
    assert stream.drops == 1
    stream.close()
