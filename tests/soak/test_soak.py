"""Soak: a mixed workload through pasta-net for minutes, both directions, every byte
checked, with the daemon's fd count and RSS watched. Run by hand::

    PASTA_NET_SOAK_SECONDS=600 python -m pytest tests/soak -s

Outbound, the container runs tests/soak/workload.py against the remote's servers (TCP
bulk up and down, 16 workers of short echo connections, 4 of UDP echo with a new flow
every 100 datagrams) and pings the remote; inbound, the remote runs the same workload
against servers in the container through ``-t``/``-u`` forwards. UDP flows expire after
10 s (PASTA_NET_UDP_TIMEOUT), so sockets are opened and closed all along. The report
(printed, and returned in the assertion message on failure) gives start, peak and end
figures and the RSS series; "flat" means the end, once every flow is gone (the ping
flow after 60 s), is back at the start: the same fd count, RSS within a few MiB of the
start, and no RSS growth from the first half of the run to the second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandbox
import servers
from sandbox import HOST_V4, HOST_V6, REMOTE_V4

from pasta_net.core.icmp import ECHO_TIMEOUT

DURATION = float(os.environ.get("PASTA_NET_SOAK_SECONDS") or 0)
WORKLOAD = str(Path(__file__).with_name("workload.py"))
SAMPLE_EVERY = 30.0
RSS_WARM_UP_KIB = 8 << 10
RSS_DRIFT_KIB = 2 << 10
UDP_TIMEOUT = 10
PORTS = f"{servers.ECHO_PORT},{servers.SINK_PORT},{servers.SOURCE_PORT}"

pytestmark = pytest.mark.skipif(
    not DURATION, reason="run by hand: PASTA_NET_SOAK_SECONDS=600 pytest tests/soak -s")


def open_files(pid: int) -> list[str]:
    """What the daemon's fds point at (socket:[inode], pipe:[inode], paths)."""
    fds = Path(f"/proc/{pid}/fd")
    return sorted(os.readlink(fd) for fd in fds.iterdir())


def sample(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+) kB", status)[1])
    return {"fds": len(os.listdir(f"/proc/{pid}/fd")), "rss_kib": rss}


def test_soak(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
              topology: sandbox.Topology, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTA_NET_UDP_TIMEOUT", str(UDP_TIMEOUT))
    running = pasta_net.start(["--config-net", "-t", PORTS, "-u", str(servers.ECHO_PORT),
                               "-T", "none", "-U", "none"])
    container.wait_for_address(HOST_V6)
    container.popen([sys.executable, servers.__file__, "--address", HOST_V4,
                     "--address", HOST_V6])
    sandbox.wait_until(lambda: servers.SOURCE_PORT in {e.port for e in container.listening()},
                       10, "container servers")
    time.sleep(1)
    samples = [sample(running.pid)]
    files = open_files(running.pid)
    env = {**os.environ, "PYTHONPATH": str(Path(servers.__file__).parent)}
    outbound = container.popen([sys.executable, WORKLOAD, REMOTE_V4, str(DURATION), "1"],
                               stdout=subprocess.PIPE, env=env)
    inbound = topology.remote.popen([sys.executable, WORKLOAD, HOST_V4, str(DURATION), "2"],
                                    stdout=subprocess.PIPE, env=env)
    ping = container.popen(["ping", "-q", "-i", "0.2", "-w", str(int(DURATION)), REMOTE_V4],
                           stdout=subprocess.PIPE)
    started = time.monotonic()
    while time.monotonic() - started < DURATION:
        time.sleep(min(SAMPLE_EVERY, max(0.0, DURATION - (time.monotonic() - started))))
        samples.append(sample(running.pid))
    results = [json.loads(p.communicate(timeout=DURATION + 300)[0].decode().splitlines()[-1])
               for p in (outbound, inbound)]
    ping_out = ping.communicate(timeout=60)[0].decode()
    time.sleep(max(UDP_TIMEOUT, ECHO_TIMEOUT) + 5)  # every flow has expired or closed
    end = sample(running.pid)
    report = {
        "seconds": DURATION, "outbound": results[0], "inbound": results[1],
        "ping": re.search(r"(\d+) packets transmitted, (\d+) received", ping_out).group(0),
        "start": samples[0], "peak": {k: max(s[k] for s in samples) for k in samples[0]},
        "end_of_load": samples[-1], "end_idle": end,
        "rss_kib_every_30s": [s["rss_kib"] for s in samples],
        "fds_new_at_end": sorted(set(open_files(running.pid)) - set(files)),
    }
    print(json.dumps(report, indent=2))
    for result in results:
        assert not result.get("failures"), report
        assert result["tcp_up_bytes"] and result["tcp_down_bytes"], report
        assert result["short_connections"] and result["udp_datagrams"], report
    assert end["fds"] == samples[0]["fds"], report
    # Flat: a few MiB of warm-up (allocator arenas, flow tables at their high-water
    # mark), then no growth: the second half of the run peaks where the first did.
    assert end["rss_kib"] - samples[0]["rss_kib"] < RSS_WARM_UP_KIB, report
    half = len(samples) // 2
    assert max(s["rss_kib"] for s in samples[half:]) - max(
        s["rss_kib"] for s in samples[:half]) < RSS_DRIFT_KIB, report
