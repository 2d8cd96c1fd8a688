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
loopback instead. A rule's explicit target address (``-t 8080:10.0.0.5/80``) wins (the
shell's part: it is the same for every connection of the rule).
-T/-U keep the loopback address the client used (``fwd_nat_from_splice``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Set

from pasta_net.core.portspec import PortForward

__all__ = [
    "LOOPBACK",
    "TCP_LISTEN",
    "UDP_UNCONNECTED",
    "bound_ports",
    "ip_version",
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


def ip_version(addr: str) -> int:
    """4 for an IPv4 socket address, IPv4-mapped ones (``::ffff:127.0.0.1``, what a
    dual-stack listener sees) included; 6 otherwise."""
    return 4 if "." in addr else 6


def is_loopback(addr: str) -> bool:
    """Whether a peer's address, as the kernel formats it (``getpeername``), is loopback.

    Text prefixes rather than :mod:`ipaddress`: this runs for every accepted connection,
    and parsing costs more than the splice decision it serves.
    """
    return addr.startswith(("127.", "::ffff:127.")) or addr == "::1"


def spliced_target(version: int, ns_addr: bytes | None, ns_loopback: bool) -> str:
    """The namespace address a spliced -t/-u connection of IP ``version`` goes to, when
    its rule names none.

    ``ns_addr`` is the namespace's own address of that version (None when it has none:
    its loopback is then the only way in).
    """
    if ns_loopback or ns_addr is None:
        return LOOPBACK[version]
    return str(ipaddress.ip_address(ns_addr))
