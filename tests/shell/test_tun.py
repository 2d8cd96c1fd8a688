"""The tap device, created in a namespace this test makes and removes.

Every check of the namespace goes through ``/usr/bin/nsenter`` (``nsenter`` on PATH may
be the Python package's script) and never looks at the machine's own interfaces.
"""

from __future__ import annotations

import os
import select
import socket
import struct
import subprocess

import pytest

from pasta_net import netns
from pasta_net.tun import VNET_HDR_LEN, TunError, open_tap

NSENTER = "/usr/bin/nsenter"
VIRTIO_NET_HDR_F_NEEDS_CSUM = 1


def ns_run(pid: int, *argv: str) -> str:
    return subprocess.run(
        [NSENTER, "-t", str(pid), "-n", *argv], check=True, capture_output=True, text=True
    ).stdout


def test_tap_with_vnet_header_and_offload(
    holder: subprocess.Popen[str], target: netns.Target
) -> None:
    with netns.in_netns(target):
        tap = open_tap("pasta0")
    try:
        assert (tap.name, tap.vnet_hdr, tap.offload) == ("pasta0", True, True)
        assert os.get_blocking(tap.fd) is False
        assert os.get_inheritable(tap.fd) is False
        details = ns_run(holder.pid, "ip", "-d", "link", "show", "pasta0")
        assert f"{tap.ifindex}: pasta0:" in details
        assert "tun type tap pi off vnet_hdr on" in details
    finally:
        os.close(tap.fd)
    assert "pasta0" not in ns_run(holder.pid, "ip", "link"), "the tap must die with its fd"


def test_tap_without_vnet_header(holder: subprocess.Popen[str], target: netns.Target) -> None:
    with netns.in_netns(target):
        tap = open_tap("plain0", vnet_hdr=False)
    try:
        assert (tap.vnet_hdr, tap.offload) == (False, False)
        assert "vnet_hdr off" in ns_run(holder.pid, "ip", "-d", "link", "show", "plain0")
    finally:
        os.close(tap.fd)


def test_syn_from_namespace_leaves_checksum_to_us(
    holder: subprocess.Popen[str], target: netns.Target
) -> None:
    """With offload on, the kernel hands over a SYN with only the pseudo-header summed."""
    with netns.in_netns(target):
        tap = open_tap("pasta0")
    try:
        ns_run(holder.pid, "ip", "link", "set", "pasta0", "up")
        ns_run(holder.pid, "ip", "addr", "add", "198.51.100.2/24", "dev", "pasta0")
        ns_run(holder.pid, "ip", "neigh", "add", "198.51.100.1", "lladdr", "02:00:00:00:00:01",
               "dev", "pasta0")  # fmt: skip
        with netns.in_netns(target):
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        with client:
            assert client.connect_ex(("198.51.100.1", 80)) != 0  # EINPROGRESS
            frame = read_ipv4_tcp(tap.fd)
        flags, _gso, _hdr_len, _gso_size, csum_start, csum_offset, _n = struct.unpack_from(
            "<BBHHHHH", frame
        )
        assert flags & VIRTIO_NET_HDR_F_NEEDS_CSUM
        assert (csum_start, csum_offset) == (34, 16)  # Ethernet + IPv4 header; TCP checksum
    finally:
        os.close(tap.fd)


def read_ipv4_tcp(fd: int) -> bytes:
    """The first IPv4 TCP frame (with its virtio-net header) the namespace sends."""
    while select.select([fd], [], [], 5)[0]:
        frame = os.read(fd, 65536 + VNET_HDR_LEN)
        eth = frame[VNET_HDR_LEN:]
        if eth[12:14] == b"\x08\x00" and eth[23] == socket.IPPROTO_TCP:
            return frame
    raise AssertionError("no TCP frame from the namespace within 5 s")


def test_name_too_long(target: netns.Target) -> None:
    with netns.in_netns(target), pytest.raises(TunError, match="Interface name too long"):
        open_tap("a-name-of-16-chr")


def test_missing_tun_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pasta_net.tun._TUN_PATH", "/nonexistent/tun")
    with pytest.raises(TunError, match=r"^Failed to open /nonexistent/tun: No such file"):
        open_tap("pasta0")
