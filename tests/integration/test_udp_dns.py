"""UDP flows, DNS forwarding and host-address mapping, end to end (issue 5).

The container's sockets are opened by this process inside the container netns
(netsockets.py), so every check sees addresses, ports and errnos first hand. The remote
echo server is servers.py's; the other servers (DNS on the remote, "who is asking" on the
remote and on the sandbox host's loopback and global addresses) are Responder threads.

pasta-net reads the sandbox's resolv.conf from $PASTA_NET_RESOLV_CONF (never the
machine's own), and idles UDP flows out after $PASTA_NET_UDP_TIMEOUT seconds where a
test watches a flow expire.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import random
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import dnswire
import pytest
import sandbox
import servers
from netsockets import Handler, Responder, socket_in, whoami
from sandbox import GATEWAY_V4, GATEWAY_V6, HOST_V4, HOST_V6, REMOTE_V4, REMOTE_V6

ECHO = servers.ECHO_PORT
WHOAMI_PORT = 10053
BULK_PORT = 10054
NO_FORWARDS = ["-t", "none", "-T", "none", "-U", "none"]
MTU = 65520
MAX_PAYLOAD = {4: MTU - 20 - 8, 6: MTU - 40 - 8}
"""The largest datagram the namespace sends without fragmenting it, at pasta's MTU."""
LARGEST = {4: 65535 - 20 - 8, 6: 65535 - 8}
"""The largest UDP payload an IPv4 / IPv6 (no jumbogram) packet carries."""
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
REMOTE = {4: REMOTE_V4, 6: REMOTE_V6}
HOST = {4: HOST_V4, 6: HOST_V6}
DNS_NAME = "host.pasta-net.test"
DNS_RECORDS = {(DNS_NAME, dnswire.TYPE_A): ipaddress.ip_address("192.0.2.53").packed,
               (DNS_NAME, dnswire.TYPE_AAAA): ipaddress.ip_address("2001:db8:53::1").packed}
families = pytest.mark.parametrize("version", [4, 6], ids=["v4", "v6"])


@attrs.define(eq=False)
class Net:
    """pasta-net serving the test's container, and the container's sockets."""

    runner: sandbox.ProgramRunner
    container: sandbox.Container
    running: sandbox.Running | None = None
    _sockets: list[socket.socket] = attrs.field(factory=list)

    def start(self, *args: str, udp: tuple[str, ...] = ("none",)) -> sandbox.Running:
        """--config-net, no TCP forwards, ``udp`` as -u; returns once the container's
        addresses are usable."""
        forwards = [arg for spec in udp for arg in ("-u", spec)]
        self.running = self.runner.start(["--config-net", *NO_FORWARDS, *forwards, *args])
        self.container.wait_for_address(HOST_V6)
        return self.running

    def client(self, version: int, peer: tuple[str, int] | None = None, port: int = 0,
               kind: int = socket.SOCK_DGRAM) -> socket.socket:
        """A socket in the container, bound to ``port`` (UDP) and connected to ``peer``."""
        bind = ("", port) if kind == socket.SOCK_DGRAM else None
        sock = socket_in(self.container.path, FAMILY[version], kind, bind=bind)
        self._sockets.append(sock)
        if peer is not None:
            sock.connect(peer)
        return sock

    def host_sockets(self, peer: tuple[str, int]) -> set[str]:
        """The inodes of the UDP sockets pasta-net holds connected to ``peer`` (its fds,
        matched against `ss` in the sandbox host netns, where they live)."""
        assert self.running is not None
        inodes = set()
        for fd in Path(f"/proc/{self.running.pid}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed while we list them
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
        address = f"[{peer[0]}]" if ":" in peer[0] else peer[0]
        lines = sandbox.run_command(["ss", "-Huane", "dst", f"{address}:{peer[1]}"]).stdout
        return {inode for line in lines.decode().splitlines() for inode in inodes
                if f" ino:{inode} " in line}

    def close(self) -> None:
        for sock in self._sockets:
            sock.close()


@pytest.fixture
def net(pasta_net: sandbox.ProgramRunner, container: sandbox.Container) -> Iterator[Net]:
    with contextlib.closing(Net(pasta_net, container)) as net:
        yield net


@pytest.fixture(autouse=True)
def sandbox_resolv_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The resolv.conf pasta-net reads: the remote's DNS server, never the machine's."""
    path = tmp_path / "resolv.conf"
    path.write_text(f"search pasta-net.test\nnameserver {REMOTE_V4}\nnameserver {REMOTE_V6}\n")
    monkeypatch.setenv("PASTA_NET_RESOLV_CONF", str(path))
    return path


def remote_responder(topology: sandbox.Topology, port: int,
                     handler: Handler) -> Responder:
    """``handler`` answering UDP on both of the remote's service addresses."""
    return Responder(handler, [socket_in(topology.remote.path, FAMILY[v], bind=(REMOTE[v], port))
                               for v in (4, 6)])


def exchange(sock: socket.socket, data: bytes, peer: tuple[str, int] | None = None
             ) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram, return the reply and where it came from."""
    if peer is None:
        sock.send(data)
    else:
        sock.sendto(data, peer)
    reply, source = sock.recvfrom(1 << 16)
    return reply, source[:2]


# ---------------------------------------------------------------------- volume --
class Datagrams:
    """Numbered datagrams of random sizes (up to ``largest``), each fully determined by its
    number, so a reply can be checked without keeping what was sent."""

    _BLOCK = random.Random(5).randbytes(1 << 17)

    def __init__(self, count: int, largest: int, seed: int) -> None:
        rng = random.Random(seed)
        self.sizes = [rng.randrange(4, largest + 1) for _ in range(count)]
        self.sizes[:2] = [4, largest]  # the extremes, always

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> bytes:
        offset = index * 7919 % (len(self._BLOCK) - self.sizes[index])
        return struct.pack("!I", index) + self._BLOCK[offset : offset + self.sizes[index] - 4]


WINDOW = 1 << 16
"""Bytes in flight at most (one datagram of any size may exceed it alone). The paced
rate: each datagram crosses the sandbox's 1500-byte veth as some 45 fragments whose
buffers make it cost about twice its size in the echo server's receive buffer (the
default 208 KiB), so more in flight loses datagrams there, before pasta-net."""


def pump(sock: socket.socket, datagrams: Datagrams) -> tuple[int, str, str]:
    """Send every datagram to the echo server, WINDOW bytes outstanding at most;
    (replies, sha256 of what was sent, sha256 of what came back, in arrival order)."""
    sent, received = hashlib.sha256(), hashlib.sha256()
    outstanding: set[int] = set()
    in_flight = next_index = replies = 0
    while replies < len(datagrams):
        while next_index < len(datagrams) and (
                not outstanding or in_flight + datagrams.sizes[next_index] <= WINDOW):
            data = datagrams[next_index]
            sock.send(data)
            sent.update(data)
            outstanding.add(next_index)
            in_flight += len(data)
            next_index += 1
        try:
            reply = sock.recv(1 << 16)
        except TimeoutError:
            pytest.fail(f"datagrams {sorted(outstanding)} lost after {replies} replies")
        index = struct.unpack_from("!I", reply)[0]
        assert index in outstanding, f"reply {index} was not expected (again?)"
        assert reply == datagrams[index], f"reply {index} differs from what was sent"
        outstanding.remove(index)
        in_flight -= len(reply)
        received.update(reply)
        replies += 1
    return replies, sent.hexdigest(), received.hexdigest()


@families
def test_10000_datagrams_of_random_sizes_each_way(net: Net, version: int) -> None:
    """Up to the largest the namespace sends unfragmented at the MTU; every datagram is
    checked on return, and the whole stream is hashed both ways."""
    net.start()
    sock = net.client(version, (REMOTE[version], ECHO))
    replies, sent, received = pump(sock, Datagrams(10_000, MAX_PAYLOAD[version], version))
    assert replies == 10_000
    assert received == sent


@pytest.fixture(scope="module")
def remote_bulk(topology: sandbox.Topology) -> Iterator[None]:
    """Answers any datagram with the largest one its family carries."""
    with remote_responder(topology, BULK_PORT,
                          lambda _request, client: bytes(LARGEST[6 if ":" in client[0] else 4])):
        yield


@families
def test_largest_datagrams_both_ways(net: Net, remote_bulk: None, version: int) -> None:
    """To the host: the most the MTU lets the namespace send whole. From the host: the
    most a datagram can carry at all (the frame is larger than the MTU; the tap takes it)."""
    net.start()
    data = random.randbytes(MAX_PAYLOAD[version])
    assert exchange(net.client(version, (REMOTE[version], ECHO)), data)[0] == data
    bulk = net.client(version, (REMOTE[version], BULK_PORT))
    assert len(exchange(bulk, b"?")[0]) == LARGEST[version]


@families
def test_100_concurrent_flows_get_their_own_replies(net: Net, version: int) -> None:
    net.start()
    socks = [net.client(version, (REMOTE[version], ECHO)) for _ in range(100)]
    for round_ in range(3):
        for number, sock in enumerate(socks):
            sock.send(f"flow {number} round {round_}".encode())
        for number, sock in enumerate(socks):
            assert sock.recv(100) == f"flow {number} round {round_}".encode()


@families
def test_burst_beyond_one_read_batch_is_delivered_whole(net: Net, topology: sandbox.Topology,
                                                        version: int) -> None:
    """100 datagrams wait on the flow's host socket at once (pasta-net reads 64 a turn)."""
    net.start()
    with socket_in(topology.remote.path, FAMILY[version], bind=(REMOTE[version], 0)) as remote:
        sock = net.client(version, remote.getsockname()[:2])
        sock.send(b"go")
        flow = remote.recvfrom(10)[1]
        for number in range(100):
            remote.sendto(b"%d" % number, flow)
    assert [sock.recv(10) for _ in range(100)] == [b"%d" % n for n in range(100)]


# ------------------------------------------------------------------ addressing --
@pytest.fixture(scope="module")
def remote_whoami(topology: sandbox.Topology) -> Iterator[None]:
    with remote_responder(topology, WHOAMI_PORT, whoami):
        yield


@families
def test_source_address_and_port_are_kept_when_free(net: Net, remote_whoami: None,
                                                    version: int) -> None:
    net.start()
    sock = net.client(version, (REMOTE[version], WHOAMI_PORT), port=40123)
    reply, source = exchange(sock, b"?")
    assert source == (REMOTE[version], WHOAMI_PORT), "replies come from the real peer"
    assert reply.decode() == f"{HOST[version]} 40123"


@families
def test_source_port_taken_on_the_host_falls_back_to_any(net: Net, remote_whoami: None,
                                                         version: int) -> None:
    net.start()
    with socket_in(None, FAMILY[version], bind=("", 40124)):
        sock = net.client(version, (REMOTE[version], WHOAMI_PORT), port=40124)
        address, port = exchange(sock, b"?")[0].decode().split()
    assert address == HOST[version]
    assert port != "40124"


@families
def test_closed_port_is_reported_as_port_unreachable(net: Net, version: int) -> None:
    """The remote's ICMP error reaches the host socket as ECONNREFUSED; the namespace gets
    its own ICMP port unreachable, so a connected socket there sees ECONNREFUSED too."""
    net.start()
    sock = net.client(version, (REMOTE[version], 9))
    sock.send(b"anyone?")
    with pytest.raises(ConnectionRefusedError):
        sock.recv(100)


# --------------------------------------------------------------------- expiry --
SHORT_TIMEOUT = 2.0
"""The flow timeout of these tests: long enough for a loaded machine to look in time."""


def test_idle_flow_expires_and_its_socket_is_closed(net: Net,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTA_NET_UDP_TIMEOUT", str(SHORT_TIMEOUT))
    net.start()
    peer = (REMOTE_V4, ECHO)
    sock = net.client(4, peer)
    assert exchange(sock, b"one")[0] == b"one"
    [first] = net.host_sockets(peer)
    sandbox.wait_until(lambda: not net.host_sockets(peer), 5 * SHORT_TIMEOUT, "flow expiry")
    assert exchange(sock, b"two")[0] == b"two", "a new flow after expiry"
    assert net.host_sockets(peer) - {first}, "with a new socket"


def test_busy_flow_keeps_its_socket(net: Net, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PASTA_NET_UDP_TIMEOUT", str(SHORT_TIMEOUT))
    net.start()
    peer = (REMOTE_V4, ECHO)
    sock = net.client(4, peer)
    assert exchange(sock, b"ping")[0] == b"ping"
    sockets = net.host_sockets(peer)
    started = time.monotonic()
    while time.monotonic() - started < 2 * SHORT_TIMEOUT:
        time.sleep(SHORT_TIMEOUT / 4)
        assert exchange(sock, b"ping")[0] == b"ping"
    assert net.host_sockets(peer) == sockets


# -------------------------------------------------------------------- inbound --
@families
def test_inbound_forward_shows_the_real_client(net: Net, topology: sandbox.Topology,
                                              version: int) -> None:
    net.start(udp=("5300:5301",))
    server = net.client(version, port=5301)
    with socket_in(topology.remote.path, FAMILY[version], bind=(REMOTE[version], 0)) as remote:
        remote.sendto(b"hello", (HOST[version], 5300))
        request, source = server.recvfrom(100)
        assert request == b"hello"
        assert source[:2] == (REMOTE[version], remote.getsockname()[1])
        server.sendto(b"welcome", source)
        reply, replier = remote.recvfrom(100)
    assert (reply, replier[:2]) == (b"welcome", (HOST[version], 5300))


@families
def test_inbound_reply_to_a_closed_client_port_is_reported(net: Net,
                                                           topology: sandbox.Topology,
                                                           version: int) -> None:
    """The listener's error queue names the client: the container's socket connected to
    that client sees ECONNREFUSED."""
    net.start(udp=("5302",))
    server = net.client(version, port=5302)
    with socket_in(topology.remote.path, FAMILY[version], bind=(REMOTE[version], 0)) as remote:
        remote.sendto(b"hello", (HOST[version], 5302))
        source = server.recvfrom(100)[1]
    server.connect(source)
    server.send(b"anyone left?")
    with pytest.raises(ConnectionRefusedError):
        server.recv(100)


# ------------------------------------------------------------------------ DNS --
def dns_responder(netns: Path | None, addresses: dict[int, str]) -> Responder:
    """DNS over UDP and TCP, port 53 of ``addresses`` (by family) in ``netns``."""
    sockets = [socket_in(netns, FAMILY[v], kind, bind=(address, 53))
               for v, address in addresses.items()
               for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
    return Responder(lambda request, _client: dnswire.answer(request, DNS_RECORDS), sockets)


@pytest.fixture(scope="module")
def dns_server(topology: sandbox.Topology) -> Iterator[None]:
    """The resolver of the sandbox's resolv.conf, on the remote test host."""
    with dns_responder(topology.remote.path, REMOTE):
        yield


def dig(net: Net, server: str, transport: str, qtype: str) -> list[str]:
    """dig's short answer for DNS_NAME from the container (dig ignores replies from anyone
    but the server it asked, so an answer also proves where it came from)."""
    tcp = "+tcp" if transport == "tcp" else "+notcp"
    result = net.container.run(["dig", f"@{server}", tcp, "+tries=1", "+time=5", "+short",
                                DNS_NAME, qtype])
    return result.stdout.decode().split()


@pytest.mark.parametrize(("forward", "qtype", "expected"), [
    ("169.254.1.1", "A", "192.0.2.53"),
    ("fd00::53", "AAAA", "2001:db8:53::1"),
], ids=["v4", "v6"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_dig_resolves_through_dns_forward(net: Net, dns_server: None, forward: str, qtype: str,
                                          expected: str, transport: str) -> None:
    """The remote's DNS server, the first resolver of the sandbox's resolv.conf, answers
    at --dns-forward."""
    net.start("--dns-forward", forward)
    assert dig(net, forward, transport, qtype) == [expected]


def test_dns_forward_reply_comes_from_the_forward_address(net: Net, dns_server: None) -> None:
    net.start("--dns-forward", "169.254.1.1")
    reply, source = exchange(net.client(4), dnswire.query(7, DNS_NAME, dnswire.TYPE_A),
                             ("169.254.1.1", 53))
    assert source == ("169.254.1.1", 53)
    assert dnswire.parse_response(reply) == (7, 0, [DNS_RECORDS[(DNS_NAME, dnswire.TYPE_A)]])


def test_dns_host_overrides_resolv_conf(net: Net, dns_server: None,
                                        sandbox_resolv_conf: Path) -> None:
    sandbox_resolv_conf.write_text("nameserver 192.0.2.99\n")  # nobody answers there
    net.start("--dns-forward", "169.254.1.1", "--dns-host", REMOTE_V4)
    query = dnswire.query(8, DNS_NAME, dnswire.TYPE_A)
    reply = exchange(net.client(4), query, ("169.254.1.1", 53))[0]
    assert dnswire.parse_response(reply)[1:] == (0, [DNS_RECORDS[(DNS_NAME, dnswire.TYPE_A)]])


@pytest.mark.parametrize("args", [(), ("--dns-forward", "169.254.1.1")],
                         ids=["gateway", "dns-forward"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_resolver_on_the_host_loopback(net: Net, sandbox_resolv_conf: Path,
                                       args: tuple[str, ...], transport: str) -> None:
    """A host whose only resolver is systemd-resolved's 127.0.0.53: as pasta, the gateway
    (or the --dns-forward address) port 53 leads to it."""
    sandbox_resolv_conf.write_text("nameserver 127.0.0.53\n")
    net.start(*args)
    server = args[1] if args else GATEWAY_V4
    with dns_responder(None, {4: "127.0.0.53"}):
        assert dig(net, server, transport, "A") == ["192.0.2.53"]


# -------------------------------------------------------------------- mapping --
@pytest.fixture
def host_servers() -> Iterator[None]:
    """UDP and TCP "who is asking" on the sandbox host, port WHOAMI_PORT: on 127.0.0.1 and
    ::1 only, and on the global addresses only (the container has those too)."""
    addresses = {4: ("127.0.0.1", HOST_V4), 6: ("::1", HOST_V6)}
    sockets = [socket_in(None, FAMILY[v], kind, bind=(address, WHOAMI_PORT))
               for v, pair in addresses.items() for address in pair
               for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM)]
    with Responder(whoami, sockets):
        yield


def who_is_asking(net: Net, version: int, address: str) -> tuple[str, str]:
    """The client address the server at ``address`` saw, over UDP and over TCP; checks
    that the UDP reply came from ``address``."""
    reply, source = exchange(net.client(version, (address, WHOAMI_PORT)), b"?")
    assert source == (address, WHOAMI_PORT)
    with net.client(version, (address, WHOAMI_PORT), kind=socket.SOCK_STREAM) as stream:
        stream.sendall(b"\0\0")  # an empty message, length-prefixed
        seen_by_tcp = stream.recv(200)[2:].decode()
    return reply.decode().split()[0], seen_by_tcp.split()[0]


@pytest.mark.parametrize(("version", "gateway", "loopback"), [
    (4, GATEWAY_V4, "127.0.0.1"), (6, GATEWAY_V6, "::1")], ids=["v4", "v6"])
def test_gateway_reaches_host_loopback_by_default(net: Net, host_servers: None, version: int,
                                                  gateway: str, loopback: str) -> None:
    net.start()
    assert who_is_asking(net, version, gateway) == (loopback, loopback)


def test_map_host_loopback_address(net: Net, host_servers: None) -> None:
    net.start("--map-host-loopback", "169.254.1.3")
    assert who_is_asking(net, 4, "169.254.1.3") == ("127.0.0.1", "127.0.0.1")


def test_no_map_gw_sends_gateway_traffic_to_the_gateway(net: Net, host_servers: None) -> None:
    """The remote's rem0 (198.51.100.1) has no server on that port: port unreachable."""
    net.start("--no-map-gw")
    sock = net.client(4, (GATEWAY_V4, WHOAMI_PORT))
    sock.send(b"?")
    with pytest.raises(ConnectionRefusedError):
        sock.recv(100)


@pytest.mark.parametrize(("version", "mapped"), [(4, "169.254.1.2"), (6, "fd00::2")],
                         ids=["v4", "v6"])
def test_map_guest_addr_reaches_the_hosts_global_address(net: Net, host_servers: None,
                                                         version: int, mapped: str) -> None:
    net.start("--map-guest-addr", mapped)
    assert who_is_asking(net, version, mapped) == (HOST[version], HOST[version])


# ----------------------------------------------------------------- disabling --
def test_no_udp_passes_no_datagrams(net: Net) -> None:
    net.start("--no-udp", udp=())
    sock = net.client(4, (REMOTE_V4, ECHO))
    sock.settimeout(1)
    sock.send(b"lost")
    with pytest.raises(TimeoutError):
        sock.recv(100)
    assert not net.host_sockets((REMOTE_V4, ECHO))
