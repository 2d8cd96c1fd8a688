"""Speed of the software checksum path (passt mode computes every checksum in Python).

    python3 bench/checksum.py [--seconds S]

Prints Gbit/s of ``pasta_net.core.checksum.checksum`` on 64 KiB buffers (the largest
frame), and on MSS-sized (1448-byte) payloads, which is what passt mode sums when the
guest's MTU is 1500. DESIGN.md §3 expects about 5 Gbit/s per core for the big buffers.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pasta_net.core.checksum import checksum

SIZES = {"64 KiB": 65536, "1448 B (MSS)": 1448}


def gbit_per_s(size: int, seconds: float) -> float:
    """Sum one random buffer of ``size`` bytes for ``seconds``; the best rate of 100
    calls in a row (the best, not the mean: other load on the machine only slows down)."""
    data = memoryview(os.urandom(size))
    best = float("inf")
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(100):
            checksum(data)
        best = min(best, time.perf_counter() - start)
    return 100 * size * 8 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per buffer size")
    args = parser.parse_args()
    for label, size in SIZES.items():
        print(f"checksum {label:>13}: {gbit_per_s(size, args.seconds):6.2f} Gbit/s")


if __name__ == "__main__":
    main()
