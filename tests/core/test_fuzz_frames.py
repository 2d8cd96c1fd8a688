"""Hostile frames: every parser, the engine and the passt stream framing, under mutation.

Real frames (tests/core/fuzzing.py: ARP, IPv4 with options and fragments, IPv6 with
extension-header chains, TCP with options, UDP, ICMP, NDP, DHCP) are mutated — bits
flipped, 16-bit fields set to edge values, bytes inserted, deleted, duplicated, the frame
cut short — and handed to each parser, and in sequences to an engine driven by a model of
the hub. The property: :class:`MalformedFrame` or a clean result; from the engine, never
an exception at all, and only actions the hub can execute. The atheris harness in
tests/fuzz/ runs the same checks for millions of inputs; a crash it finds is added
here as a ``test_regression_*`` case (a million inputs per target found none so far).

Kept under a minute in CI: a few hundred examples per property, no shrinking deadline.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pasta_net.core.frames import MalformedFrame
from pasta_net.shell.qemu import MAX_FRAME, QemuStream
from tests.core import fuzzing

EXAMPLES = settings(max_examples=200, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
ENGINE_EXAMPLES = settings(EXAMPLES, max_examples=150)
_EDGE16 = [0, 1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A seed frame with a few edits of the kinds that break length arithmetic."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        edit = draw(st.sampled_from(
            ["flip", "field16", "overwrite", "insert", "delete", "duplicate", "truncate"]))
        if edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "field16" and len(data) >= 2:
            at = min(at, len(data) - 2)
            edge = draw(st.sampled_from([*_EDGE16, len(data), len(data) - at]))
            struct.pack_into("!H", data, at, edge & 0xFFFF)
        elif edit == "overwrite":
            data[at : at + 4] = draw(st.binary(min_size=1, max_size=4))
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif edit == "delete":
            del data[at : at + draw(st.integers(1, 40))]
        elif edit == "duplicate":
            data[at:at] = data[at : at + draw(st.integers(1, 40))]
        else:
            del data[at:]
    return bytes(data)


ANY_FRAME = st.one_of(mutated(fuzzing.all_seeds()), st.binary(max_size=200))


def clean_or_malformed(name: str, data: bytes) -> None:
    try:
        fuzzing.PARSERS[name](data)
    except MalformedFrame:
        pass


@pytest.mark.parametrize("name", sorted(fuzzing.SEEDS))
def test_seeds_parse(name: str) -> None:
    """The properties start from frames the parsers accept, not from rejected ones."""
    accepted = 0
    for frame in fuzzing.SEEDS[name]:
        try:
            fuzzing.PARSERS[name](frame)
            accepted += 1
        except MalformedFrame:
            pass
    assert accepted


PARSER_INPUTS = {name: st.one_of(mutated(fuzzing.parser_seeds(name)), ANY_FRAME)
                 for name in fuzzing.PARSERS}


@pytest.mark.parametrize("name", sorted(fuzzing.PARSERS))
@EXAMPLES
@given(data=st.data())
def test_parser_result_is_clean_or_malformed(name: str, data: st.DataObject) -> None:
    clean_or_malformed(name, data.draw(PARSER_INPUTS[name]))


# ----------------------------------------------------------------- engine --
EVENTS = st.lists(st.one_of(
    st.lists(ANY_FRAME, min_size=1, max_size=4).map(lambda frames: ("frames", frames)),
    st.lists(st.sampled_from(fuzzing.all_seeds()), min_size=1, max_size=3)
    .map(lambda frames: ("frames", frames)),
    st.integers(1, 4).map(lambda n: ("crafted", n)),
    st.just(("step", 0)),
), min_size=1, max_size=25)


def drive(events: list, offload: bool, variant: int, seed: int) -> fuzzing.HostModel:
    rng = random.Random(seed)
    host = fuzzing.HostModel(fuzzing.new_engine(offload, variant), rng)
    for kind, arg in events:
        if kind == "frames":
            host.frames(arg)
        elif kind == "crafted":
            frames = [fuzzing.crafted_segment(host.engine, rng) for _ in range(arg)]
            host.frames([f for f in frames if f is not None])
        else:
            host.step()
    return host


@ENGINE_EXAMPLES
@given(events=EVENTS, offload=st.booleans(), variant=st.integers(0, 3),
       seed=st.integers(0, 1 << 32))
def test_engine_never_raises_and_every_action_is_executable(events: list, offload: bool,
                                                           variant: int, seed: int) -> None:
    drive(events, offload, variant, seed)


@ENGINE_EXAMPLES
@given(events=EVENTS, seed=st.integers(0, 1 << 32))
def test_engine_established_connections_under_crafted_segments(events: list,
                                                               seed: int) -> None:
    """Open a few connections first, so crafted segments have windows to aim at."""
    syns = [("frames", [f]) for f in fuzzing.syn_seeds()]
    drive([*syns, ("step", 0), *events, ("crafted", 4), ("step", 0)], True, 0, seed)


# ------------------------------------------------------------ passt framing --
@st.composite
def stream_bytes(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """A qemu stream (valid frames, maybe one bad length or garbage) and read boundaries."""
    frames = draw(st.lists(st.one_of(st.sampled_from(fuzzing.all_seeds()),
                                     st.binary(min_size=14, max_size=200)), max_size=6))
    data = bytearray(fuzzing.framed(frames))
    if draw(st.booleans()):
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.one_of(
            st.sampled_from([0, 13, MAX_FRAME + 1, 0xFFFFFFFF]).map(lambda n: struct.pack("!I", n)),
            st.binary(min_size=1, max_size=8)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    return bytes(data), cuts


@EXAMPLES
@given(case=stream_bytes())
def test_qemu_stream_cuts_exactly_the_frames_sent(case: tuple[bytes, list[int]]) -> None:
    fuzzing.check_stream(*case)


@EXAMPLES
@given(frames=st.lists(st.binary(min_size=14, max_size=3000), max_size=40),
       read_sizes=st.lists(st.integers(1, 70000), max_size=6))
def test_qemu_stream_writes_whole_frames_in_order(frames: list[bytes],
                                                  read_sizes: list[int]) -> None:
    """Short writes and a slow reader never split or reorder frames: what arrives is a
    prefix-free sequence of whole frames, those sent minus whole ones dropped."""
    ours, theirs = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stream = QemuStream(client=ours)
    received = bytearray()
    try:
        for index in range(0, len(frames), 7):
            stream.write_batch([bytes(12) + f for f in frames[index : index + 7]])
            for size in read_sizes[:1]:
                theirs.setblocking(False)
                try:
                    received += theirs.recv(size)
                except BlockingIOError:
                    pass
            stream.read_batch()  # flushes the queue when the socket has room
        theirs.setblocking(False)
        while True:
            stream.read_batch()
            try:
                chunk = theirs.recv(1 << 16)
            except BlockingIOError:
                if not stream._queue:
                    break
                continue
            received += chunk
    finally:
        stream.close()
        theirs.close()
    got, bad = fuzzing.expected_frames(bytes(received))
    assert not bad
    assert fuzzing.framed(got) == bytes(received)
    iterator = iter(frames)
    assert all(any(g == f for f in iterator) for g in got)  # an ordered subsequence
