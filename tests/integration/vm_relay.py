"""A stand-in VM for passt-mode tests: a tap device whose frames travel over a passt socket.

    nsenter --net=FILE python3 vm_relay.py --ifname vm0 (--socket PATH | --fd N)

Run inside a throwaway network namespace, whose kernel is then the "VM": its TCP/IP
stack, DHCP client and neighbour tables are real. This process plays qemu's part: frames
the kernel sends on the tap go to the socket behind a 4-byte big-endian length
(``-netdev stream``), frames from the socket go to the tap. It prints "ready" once the
link is up and the socket connected, and exits 0 when pasta-net closes the connection.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import select
import socket
import struct
import subprocess
import time

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
LENGTH = struct.Struct("!I")
CONNECT_TIMEOUT = 10.0


def open_tap(name: str) -> int:
    """A plain tap (no packet info, no virtio-net header), up, without IPv6 DAD delay."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    with open(f"/proc/sys/net/ipv6/conf/{name}/accept_dad", "w") as knob:
        knob.write("0")
    subprocess.run(["ip", "link", "set", name, "up"], check=True)
    return fd


def connect(path: str) -> socket.socket:
    """Connect to pasta-net's socket, waiting for it to appear (it may still be starting)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
            return sock
        except (FileNotFoundError, ConnectionRefusedError):
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def relay(tap: int, sock: socket.socket) -> None:
    """Move frames both ways until the socket closes."""
    pending = bytearray()
    while True:
        readable, _, _ = select.select([tap, sock], [], [])
        if tap in readable:
            frame = os.read(tap, 65536)
            sock.sendall(LENGTH.pack(len(frame)) + frame)
        if sock in readable:
            data = sock.recv(1 << 20)
            if not data:
                return
            pending += data
            while len(pending) >= LENGTH.size:
                (length,) = LENGTH.unpack_from(pending)
                if len(pending) < LENGTH.size + length:
                    break
                os.write(tap, pending[LENGTH.size : LENGTH.size + length])
                del pending[: LENGTH.size + length]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--ifname", default="vm0")
    endpoint = parser.add_mutually_exclusive_group(required=True)
    endpoint.add_argument("--socket", help="pasta-net's listening socket")
    endpoint.add_argument("--fd", type=int, help="an inherited connected socket")
    args = parser.parse_args()
    tap = open_tap(args.ifname)
    sock = connect(args.socket) if args.socket else socket.socket(fileno=args.fd)
    print("ready", flush=True)
    try:
        relay(tap, sock)
    except (BrokenPipeError, ConnectionResetError):
        pass  # pasta-net went away first: the VM is unplugged either way


if __name__ == "__main__":
    main()
