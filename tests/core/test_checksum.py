"""The Internet checksum against a plain RFC 1071 word loop, at every size class."""

from __future__ import annotations

import random
import struct

from hypothesis import given
from hypothesis import strategies as st

from pasta_net.core.checksum import checksum, sum16


def word_loop(data: bytes) -> int:
    """RFC 1071 §4.1, literally: add 16-bit words with end-around carry, complement."""
    if len(data) & 1:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def same_ones_complement(a: int, b: int) -> bool:
    """0x0000 and 0xFFFF are both ones'-complement zero."""
    return a == b or {a, b} == {0, 0xFFFF}


@given(st.binary(max_size=70000))
def test_checksum_matches_the_word_loop(data: bytes) -> None:
    assert same_ones_complement(checksum(data), word_loop(data))


@given(st.integers(8193, 70000), st.integers(0, 2**32))
def test_big_buffers_and_views_sum_like_bytes(size: int, seed: int) -> None:
    """Chunked sums (buffers above 8 KiB), odd lengths and memoryviews included."""
    data = random.Random(seed).randbytes(size)
    assert sum16(memoryview(data)) == sum16(bytearray(data))
    assert same_ones_complement(checksum(memoryview(data)), word_loop(data))


def test_all_ones_in_many_chunks() -> None:
    data = b"\xff" * 65535
    assert same_ones_complement(checksum(data), word_loop(data))
