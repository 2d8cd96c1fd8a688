"""Coverage-guided fuzzing of the parsers, the engine and the passt stream framing (atheris).

Run by hand, one target at a time (not collected by pytest: the file name does not
start with ``test_``)::

    pip install atheris
    python tests/fuzz/fuzz_frames.py TARGET [libFuzzer options]
    python tests/fuzz/fuzz_frames.py tcp -runs=1000000
    python tests/fuzz/fuzz_frames.py engine -max_total_time=3600 -jobs=2 -workers=2
    python tests/fuzz/fuzz_frames.py --list

Targets: ethernet, arp, ipv4, ipv6, tcp, udp, icmp, ndp, dhcp, dhcpv6 (each parser on
raw bytes), ``engine`` (frame batches and host-side events through an engine driven by
tests/core/fuzzing.py's HostModel) and ``qemu`` (a byte stream cut into reads through
a real socketpair into QemuStream). The seed corpus (the real frames of
tests/core/fuzzing.py) is written to ``tests/fuzz/corpus/TARGET/`` on first use; libFuzzer
adds what it finds there (that directory is ignored by git). Any exception other than
MalformedFrame is a crash: libFuzzer writes the input to ``crash-*``; reproduce with
``python tests/fuzz/fuzz_frames.py TARGET crash-...``, then turn it into a
``test_regression_*`` case in tests/core/test_fuzz_frames.py.

The same properties run in CI as hypothesis tests, with a few hundred examples each.
"""

from __future__ import annotations

import random
import struct
import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["pasta_net"]):
    from pasta_net.core.frames import MalformedFrame
    from tests.core import fuzzing

CORPUS = Path(__file__).with_name("corpus")
_RECORD = struct.Struct("!BH")
_ENGINE_OPS = 4


def engine_input(records: list[tuple[int, bytes]], offload: bool = True, variant: int = 0,
                 seed: int = 0) -> bytes:
    """Encode an engine case: a 3-byte header, then ``(op, length, data)`` records."""
    out = bytearray([int(offload), variant, seed])
    for op, data in records:
        out += _RECORD.pack(op, len(data)) + data
    return bytes(out)


def run_engine(data: bytes) -> None:
    """Ops: 0 frame (the record's bytes), 1 host-side step, 2 crafted segments, 3 a seed
    frame (chosen by the first data byte) — so libFuzzer can splice real frames in."""
    if len(data) < 3:
        return
    seeds = fuzzing.all_seeds()
    rng = random.Random(data[2])
    host = fuzzing.HostModel(fuzzing.new_engine(bool(data[0] & 1), data[1]), rng)
    pos, batch = 3, []
    while pos + _RECORD.size <= len(data):
        op, length = _RECORD.unpack_from(data, pos)
        pos += _RECORD.size
        body = data[pos : pos + length]
        pos += length
        op %= _ENGINE_OPS
        if op == 0:
            batch.append(body)
            continue
        if batch:
            host.frames(batch)
            batch = []
        if op == 1:
            host.step()
        elif op == 2:
            frames = [fuzzing.crafted_segment(host.engine, rng) for _ in range(length % 4 + 1)]
            host.frames([f for f in frames if f is not None])
        elif body:
            host.frames([seeds[body[0] % len(seeds)]])
    if batch:
        host.frames(batch)
    host.step()


def run_qemu(data: bytes) -> None:
    """The first byte says how many read boundaries follow as 2-byte offsets."""
    if not data:
        return
    count = data[0] % 6
    cuts = [int.from_bytes(data[1 + 2 * i : 3 + 2 * i], "big") for i in range(count)]
    fuzzing.check_stream(data[1 + 2 * count :], cuts)


def _parser(name: str):
    parse = fuzzing.PARSERS[name]

    def run(data: bytes) -> None:
        try:
            parse(data)
        except MalformedFrame:
            pass

    return run


TARGETS = {name: _parser(name) for name in fuzzing.PARSERS}
TARGETS["engine"] = run_engine
TARGETS["qemu"] = run_qemu


def _seed_corpus(target: str) -> list[bytes]:
    if target == "engine":
        syns = fuzzing.syn_seeds()
        data = fuzzing.SEEDS["tcp"]
        return [
            engine_input([(0, syns[0]), (1, b""), (0, data[1]), (0, data[2]), (1, b""),
                          (2, b"xx"), (0, data[3]), (1, b"")]),
            engine_input([(0, syns[1]), (1, b""), (2, b"x"), (1, b""), (0, data[6])], False),
            engine_input([(3, bytes([i])) for i in range(len(fuzzing.all_seeds()))], seed=3),
            *(engine_input([(0, f), (1, b"")], variant=i % 4)
              for i, f in enumerate(fuzzing.all_seeds())),
        ]
    if target == "qemu":
        stream = fuzzing.framed(fuzzing.all_seeds())
        return [b"\x00" + stream, b"\x02\x00\x05\x01\x00" + stream,
                b"\x01\x00\x10" + fuzzing.framed(fuzzing.SEEDS["tcp"]) + b"\x00\x00\x00\x05"]
    return fuzzing.parser_seeds(target)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        print(f"usage: {sys.argv[0]} TARGET [libFuzzer options]; targets: "
              + ", ".join(TARGETS), file=sys.stderr)
        sys.exit(0 if "--list" in sys.argv else 2)
    target = sys.argv[1]
    corpus = CORPUS / target
    if not corpus.is_dir():
        corpus.mkdir(parents=True)
        for index, seed in enumerate(_seed_corpus(target)):
            (corpus / f"seed-{index}").write_bytes(seed)
    argv = [sys.argv[0], *sys.argv[2:]]
    if not any(not a.startswith("-") for a in argv[1:]):
        argv.append(str(corpus))  # no input files or corpus named: use ours
    atheris.Setup(argv, TARGETS[target])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
