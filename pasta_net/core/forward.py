"""Port forwarding policy: which ports ``auto`` mirrors, and where a spliced connection goes.

Theory of operation
-------------------
``auto`` (pasta's ``FWD_SCAN``) forwards a port only while something is bound to its
target on the other side: for -t/-u the namespace, for -T/-U the host. Once a second the
shell reads that side's ``/proc/net/{tcp,tcp6,udp,udp6}`` (:func:`bound_ports`), takes
away the ports our own listeners hold there (or a -t mirror of a namespace server would
come back as a -T mirror of itself, and so on), and asks :func:`mirrored_ports` which
listening ports the auto rules then want. Binding what is new and closing what is gone is
the shell's part. As pasta does, a UDP rule also mirrors ports with a TCP listener:
iperf3 and friends set up UDP transfers through a TCP control port of the same number.

Where a spliced connection goes (upstream ``fwd_nat_from_host``): a host-loopback client
of a -t/-u port reaches the namespace through its loopback interface but, by default,
at the namespace's own address, so that services listening only on the namespace's
127.0.0.1 are not exposed by accident; ``--host-lo-to-ns-lo`` targets the namespace's
loopback instead. A rule's explicit target address (``-t 8080:10.0.0.5/80``) wins.
-T/-U keep the loopback address the client used (``fwd_nat_from_splice``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Set

from pasta_net.core.portspec import IPAddress, PortForward

__all__ = [
    "LOOPBACK",
    "TCP_LISTEN",
    "UDP_UNCONNECTED",
    "bound_ports",
    "is_loopback",
    "mirrored_ports",
    "spliced_target",
]

TCP_LISTEN = 0x0A
"""``st`` of a listening socket in /proc/net/tcp{,6} (``TCP_LISTEN``)."""
UDP_UNCONNECTED = 0x07
"""``st`` of a bound, unconnected UDP socket in /proc/net/udp{,6} (``TCP_CLOSE``): a
server's socket, as opposed to a connected client's (``TCP_ESTABLISHED``)."""

LOOPBACK = {4: "127.0.0.1", 6: "::1"}


def bound_ports(table: str, state: int) -> set[int]:
    """Local ports of the sockets in ``state``, from the text of a /proc/net/{tcp,udp}{,6}.

    Lines look like ``0: 0100007F:1F90 00000000:0000 0A ...`` (local and remote address
    as hex, then the state); the header and anything malformed are skipped.
    """
    ports = set()
    for line in table.splitlines()[1:]:
        fields = line.split(None, 4)
        if len(fields) < 4:
            continue
        _addr, _, port = fields[1].rpartition(":")
        try:
            if int(fields[3], 16) == state:
                ports.add(int(port, 16))
        except ValueError:
            continue
    ports.discard(0)
    return ports


def mirrored_ports(forwards: Iterable[PortForward], bound: Set[int]) -> dict[int, PortForward]:
    """Listening ports of the auto rules among ``forwards`` whose target port is in
    ``bound``, each with the first rule that wants it.

    Walks the bound ports, not the rules' ranges: a lone ``auto`` covers every
    non-ephemeral port, while only a handful are ever bound.
    """
    wanted: dict[int, PortForward] = {}
    for fwd in forwards:
        if not fwd.auto:
            continue
        offset = fwd.first - fwd.to_first
        for port in bound:
            if port + offset in fwd:
                wanted.setdefault(port + offset, fwd)
    return wanted


def _ip(addr: str) -> IPAddress:
    """A socket address as an IP address: scope dropped, IPv4-mapped IPv6 as IPv4."""
    ip = ipaddress.ip_address(addr.partition("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        return ip.ipv4_mapped
    return ip


def is_loopback(addr: str) -> bool:
    """Whether a peer's socket address (``::ffff:127.0.0.1`` included) is a loopback one."""
    return _ip(addr).is_loopback


def spliced_target(client: str, to_addr: str | None, ns_addr4: bytes | None,
                   ns_addr6: bytes | None, ns_loopback: bool) -> str:
    """The namespace address a spliced -t/-u connection from host-loopback ``client`` goes to.

    The family is the client's (a dual-stack listener sees IPv4 clients as
    ``::ffff:127.0.0.1``). ``ns_addr4``/``ns_addr6`` are the namespace's own addresses,
    None where it has none: its loopback is then the only way in.
    """
    if to_addr is not None:
        return to_addr
    version = _ip(client).version
    ns_addr = ns_addr4 if version == 4 else ns_addr6
    if ns_loopback or ns_addr is None:
        return LOOPBACK[version]
    return str(ipaddress.ip_address(ns_addr))
