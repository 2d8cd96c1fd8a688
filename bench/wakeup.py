"""What one wake-up costs: a raw ``epoll.poll`` against a trio task in ``wait_readable``.

Run by hand: ``python3 bench/wakeup.py [ROUNDS]``. A forked peer and this process
play ping-pong over two pipes; this side waits for each ping the way the hub waits for
its epoll fd (a non-blocking ``epoll.poll(0)`` pass first, then a blocking wait), once
with ``epoll.poll(-1)`` and once through trio. The difference per round is what trio
adds to every wake-up of pasta-net, which bounds what request/response can gain from
anything but fewer wake-ups (README, "Still behind"). Read the CPU column: how a VM
splits it between user and system time is only as good as its tick sampling.
"""

from __future__ import annotations

import os
import resource
import select
import sys

import trio


def ping_pong(rounds: int, through_trio: bool) -> tuple[float, float]:
    """(user, system) CPU seconds of this process per round."""
    ping_r, ping_w = os.pipe()
    pong_r, pong_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the peer: ping, then wait for the pong
        for _ in range(rounds):
            os.write(ping_w, b"x")
            os.read(pong_r, 1)
        os._exit(0)
    os.set_blocking(ping_r, False)
    epoll = select.epoll()
    epoll.register(ping_r, select.EPOLLIN)  # level-triggered: a blocking poll consumes nothing

    def serve_ready() -> int:
        """One pass, as Hub._serve_ready: answer what is ready now."""
        served = 0
        for _fd, _mask in epoll.poll(0):
            os.read(ping_r, 1)
            os.write(pong_w, b"y")
            served += 1
        return served

    async def serve_with_trio() -> None:
        left = rounds
        while left:
            served = serve_ready()
            if not served:
                await trio.lowlevel.wait_readable(epoll.fileno())
            left -= served

    before = resource.getrusage(resource.RUSAGE_SELF)
    if through_trio:
        trio.run(serve_with_trio)
    else:
        left = rounds
        while left:
            served = serve_ready()
            if not served:
                epoll.poll(-1, 1)
            left -= served
    after = resource.getrusage(resource.RUSAGE_SELF)
    os.waitpid(pid, 0)
    for fd in (ping_r, ping_w, pong_r, pong_w):
        os.close(fd)
    epoll.close()
    return ((after.ru_utime - before.ru_utime) / rounds,
            (after.ru_stime - before.ru_stime) / rounds)


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 40000
    print("| wait | CPU µs/round | user | system |\n|---|---|---|---|")
    for label, through_trio in (("epoll.poll(-1)", False), ("trio wait_readable", True)):
        user, system = ping_pong(rounds, through_trio)
        print(f"| {label} | {(user + system) * 1e6:.1f} | {user * 1e6:.1f} | {system * 1e6:.1f} |")


if __name__ == "__main__":
    main()
