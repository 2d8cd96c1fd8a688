"""Port forwarding end to end: the loopback splice both ways (-t, -T), the UDP relay (-u,
-U), ``auto`` mirroring, remapped and address-bound forwards, and bind conflicts.

Bulk transfers are compared by SHA-256 at both ends. Every server runs in the container
or on the sandbox host's loopback; nothing leaves the sandbox.
"""

from __future__ import annotations

import json
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sandbox
from netsockets import Responder, socket_in, whoami
from sandbox import HOST_V4, HOST_V6

TRANSFER = str(Path(__file__).with_name("transfer.py"))
BIG = 256 << 20
PORT = 8800
"""Forwarded ports are PORT + n; container servers listen on these or remapped ones."""
NONE = ["-t", "none", "-u", "none", "-T", "none", "-U", "none"]
AUTO_DEADLINE = 2.0
"""How soon after a server appears (or goes) its mirror must follow (pasta: 1 s scans)."""
LOOPBACKS = pytest.mark.parametrize("loopback", ["127.0.0.1", "::1"], ids=["v4", "v6"])


def start(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
          *args: str) -> sandbox.Running:
    """pasta-net with --config-net, and nothing forwarded but what ``args`` say."""
    given = {args[i] for i in range(0, len(args) - 1) if args[i] in ("-t", "-u", "-T", "-U")}
    defaults = [arg for i in range(0, len(NONE), 2) if NONE[i] not in given
                for arg in NONE[i:i + 2]]
    running = pasta_net.start(["--config-net", *defaults, *args])
    container.wait_for_address(HOST_V6)
    return running


def transfer(argv: list[str], netns: sandbox.Netns | None = None,
             timeout: float = 120) -> dict:
    """transfer.py in ``netns`` (None: the sandbox host); its JSON line."""
    command = [sys.executable, TRANSFER, *argv]
    result = (netns.run(command, timeout=timeout) if netns is not None
              else sandbox.run_command(command, timeout=timeout))
    return json.loads(result.stdout.decode().splitlines()[-1])


def serve(netns: sandbox.Netns, port: int, role: str) -> subprocess.Popen[bytes]:
    """A transfer.py sink or source server in ``netns``, listening when this returns."""
    process = netns.popen([sys.executable, TRANSFER, "serve", str(port), role],
                          stdout=subprocess.PIPE)
    assert process.stdout is not None
    assert b"listening" in process.stdout.readline()
    return process


@pytest.fixture
def host_serve() -> Iterator[Callable[[int, str], None]]:
    """Factory: a transfer.py server on the sandbox host (every address), ended after."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(port: int, role: str) -> None:
        process = subprocess.Popen([sys.executable, TRANSFER, "serve", str(port), role],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
        processes.append(process)
        assert process.stdout is not None
        assert b"listening" in process.stdout.readline()

    yield start
    for process in processes:
        sandbox.stop_popen(process)


def upload_and_download(host: str, port: int, netns: sandbox.Netns | None = None,
                        size: int = BIG) -> None:
    """``size`` bytes to the sink at ``port`` and from the source at ``port + 1``."""
    up = transfer(["upload", host, str(port), str(size)], netns)
    assert (up["peer_got"], up["peer_sha"]) == (size, up["sent_sha"])
    down = transfer(["download", host, str(port + 1), str(size)], netns)
    assert (down["got"], down["got_sha"]) == (size, down["expected_sha"])


# ---------------------------------------------------------------- splice --
@LOOPBACKS
def test_spliced_256_mib_each_way_from_host_loopback(pasta_net, container, loopback) -> None:
    start(pasta_net, container, "-t", f"{PORT}-{PORT + 1}")
    serve(container, PORT, "sink")
    serve(container, PORT + 1, "source")
    upload_and_download(loopback, PORT)


def peer_seen(container: sandbox.Container, port: int, connect: tuple[str, int],
              bind: str = "::") -> str:
    """Connect from the sandbox host to ``connect``; the address a server bound to
    ``bind``:``port`` in the container saw the connection come from."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with (socket_in(container.path, family, socket.SOCK_STREAM, (bind, port)) as server,
          socket.create_connection(connect, timeout=5)):
        conn, peer = server.accept()
        conn.close()
    return peer[0].removeprefix("::ffff:")


@pytest.mark.parametrize(("options", "seen"), [
    ([], HOST_V4),
    (["--host-lo-to-ns-lo"], "127.0.0.1"),
    (["--no-splice"], sandbox.GATEWAY_V4),
], ids=["splice", "host-lo-to-ns-lo", "no-splice"])
def test_host_loopback_client_path(pasta_net, container, options, seen) -> None:
    """Spliced, a host-loopback client reaches the namespace's own address over its
    loopback (pasta ≥ 2024), or its 127.0.0.1 with --host-lo-to-ns-lo; without the
    splice it comes through the tap from the --map-host-loopback address."""
    start(pasta_net, container, "-t", str(PORT), *options)
    assert peer_seen(container, PORT, ("127.0.0.1", PORT)) == seen


@pytest.mark.parametrize("options", [[], ["--no-splice"]], ids=["splice", "tap"])
def test_forward_to_a_target_address(pasta_net, container, topology, options) -> None:
    """``-t PORT:ADDR/PORT``: connections reach a server bound to ADDR only, whichever
    path they take (spliced host-loopback clients, or the tap: the remote's, or all
    with --no-splice); UDP to the same address through the tap."""
    target = "10.0.0.5"
    container.run(["ip", "addr", "add", f"{target}/32", "dev", "lo"])
    spec = f"0.0.0.0/{PORT}:{target}/{PORT}"  # a target of one family: listen on one
    start(pasta_net, container, "-t", spec, "-u", spec, *options)
    assert peer_seen(container, PORT, ("127.0.0.1", PORT), bind=target)
    with socket_in(container.path, socket.AF_INET, socket.SOCK_STREAM,
                   (target, PORT)) as server:
        topology.remote.run([sys.executable, "-c",
                             "import socket, sys; socket.create_connection("
                             "(sys.argv[1], int(sys.argv[2])), timeout=5).close()",
                             HOST_V4, str(PORT)])
        server.accept()[0].close()
    with socket_in(container.path, socket.AF_INET, socket.SOCK_DGRAM, (target, PORT)) as udp:
        topology.remote.run([sys.executable, "-c",
                             "import socket, sys; socket.socket(socket.AF_INET, "
                             "socket.SOCK_DGRAM).sendto(b'hi', (sys.argv[1], int(sys.argv[2])))",
                             HOST_V4, str(PORT)])
        assert udp.recvfrom(100)[0] == b"hi"


def test_freebind_listens_on_an_address_the_host_does_not_have(pasta_net,
                                                                container) -> None:
    spec = f"192.0.2.99/{PORT}"  # on no interface of the sandbox host
    refused = pasta_net.run_cli(["--config-net", "--netns", str(container.path), *NONE[2:],
                                 "-t", spec])
    assert refused.returncode == 1 and "Cannot assign requested address" in refused.stderr
    start(pasta_net, container, "-t", spec, "--freebind")


@LOOPBACKS
def test_spliced_256_mib_each_way_from_namespace_loopback(pasta_net, container, host_serve,
                                                           loopback) -> None:
    """-T: the container's loopback reaches servers on the host's loopback."""
    host_serve(PORT, "sink")
    host_serve(PORT + 1, "source")
    start(pasta_net, container, "-T", f"{PORT}-{PORT + 1}")
    upload_and_download(loopback, PORT, container)


def spliced_pair(container: sandbox.Container,
                 port: int) -> tuple[socket.socket, socket.socket]:
    """(host-loopback client, its connection as accepted in the container)."""
    with socket_in(container.path, socket.AF_INET6, socket.SOCK_STREAM, ("::", port)) as server:
        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        conn = server.accept()[0]
    conn.settimeout(5)
    return client, conn


def test_half_close_travels_both_ways(pasta_net, container) -> None:
    start(pasta_net, container, "-t", str(PORT))
    client, server = spliced_pair(container, PORT)
    with client, server:
        server.sendall(b"bye")
        server.shutdown(socket.SHUT_WR)
        assert client.recv(10) == b"bye"
        assert client.recv(10) == b""  # the server's FIN
        client.sendall(b"still talking")
        assert server.recv(100) == b"still talking"
        client.shutdown(socket.SHUT_WR)
        assert server.recv(100) == b""


def _abort(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_reset_travels_both_ways(pasta_net, container) -> None:
    start(pasta_net, container, "-t", str(PORT))
    client, server = spliced_pair(container, PORT)
    with client:
        _abort(server)
        with pytest.raises(ConnectionResetError):
            client.recv(10)
    client, server = spliced_pair(container, PORT)
    with server:
        client.sendall(b"x")
        assert server.recv(1) == b"x"
        _abort(client)
        with pytest.raises(ConnectionResetError):
            server.recv(10)


def test_refused_in_the_namespace_is_a_reset_on_the_host(pasta_net, container) -> None:
    start(pasta_net, container, "-t", str(PORT))
    with (pytest.raises(ConnectionResetError),  # at once, or on the first read
          socket.create_connection(("127.0.0.1", PORT), timeout=5) as client):
        client.recv(10)


# ------------------------------------------------------------- UDP relay --
def udp_ask(netns: sandbox.Netns | None, server: tuple[str, int],
            bind_port: int = 0) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram from ``netns`` to ``server``; (the reply, where it came from)."""
    family = socket.AF_INET6 if ":" in server[0] else socket.AF_INET
    with socket_in(netns and netns.path, family, bind=("", bind_port)) as sock:
        sock.sendto(b"who", server)
        reply, peer = sock.recvfrom(1000)
    return reply, peer[:2]


@LOOPBACKS
def test_udp_from_host_loopback_is_relayed_without_the_tap(pasta_net, container,
                                                            loopback) -> None:
    start(pasta_net, container, "-u", f"{PORT}:{PORT + 7}")
    server = socket_in(container.path, socket.AF_INET6, bind=("::", PORT + 7))
    with Responder(whoami, [server]):
        reply, peer = udp_ask(None, (loopback, PORT), bind_port=PORT + 20)
    seen_addr, seen_port = reply.decode().split()
    assert peer == (loopback, PORT)
    own = HOST_V4 if loopback == "127.0.0.1" else HOST_V6
    assert (seen_addr.removeprefix("::ffff:"), int(seen_port)) == (own, PORT + 20)


@LOOPBACKS
def test_udp_from_namespace_loopback_reaches_host_loopback(pasta_net, container,
                                                            loopback) -> None:
    """-U: the host's server sees the loopback address and the port the client used."""
    family = socket.AF_INET6 if ":" in loopback else socket.AF_INET
    start(pasta_net, container, "-U", str(PORT))
    with Responder(whoami, [socket_in(None, family, bind=(loopback, PORT))]):
        reply, peer = udp_ask(container, (loopback, PORT), bind_port=PORT + 21)
    assert peer == (loopback, PORT)
    assert reply.decode() == f"{loopback} {PORT + 21}"


# ------------------------------------------------- remapped, address-bound --
def test_remapped_forward_reaches_the_target_port_both_paths(pasta_net, container,
                                                              topology) -> None:
    start(pasta_net, container, "-t", f"{PORT}-{PORT + 1}:{PORT + 10}-{PORT + 11}")
    assert peer_seen(container, PORT + 11, ("127.0.0.1", PORT + 1)) == HOST_V4
    serve(container, PORT + 10, "source")
    down = transfer(["download", HOST_V4, str(PORT), str(1 << 20)], topology.remote)
    assert (down["got"], down["got_sha"]) == (1 << 20, down["expected_sha"])


def refused(address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(address, timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.mark.parametrize(("bound", "other"), [("127.0.0.1", HOST_V4), ("::1", HOST_V6)],
                         ids=["v4", "v6"])
def test_address_bound_forward_listens_on_that_address_only(pasta_net, container, bound,
                                                            other) -> None:
    start(pasta_net, container, "-t", f"[{bound}]/{PORT}:{PORT + 3}")
    assert refused((other, PORT))
    assert peer_seen(container, PORT + 3, (bound, PORT)) == (HOST_V4 if "." in bound
                                                             else HOST_V6)


# ------------------------------------------------------------------ auto --
def host_listening(proto: str, port: int) -> bool:
    lines = sandbox.run_command(["ss", "-Hln", f"-{proto[0]}", f"sport = :{port}"]).stdout
    return bool(lines.strip())


def test_auto_mirrors_a_container_server_while_it_runs(pasta_net, container) -> None:
    """With no -t/-u/-T/-U at all, pasta forwards ``auto`` in all four directions."""
    pasta_net.start(["--config-net"])
    container.wait_for_address(HOST_V6)
    assert not host_listening("tcp", PORT)
    server = serve(container, PORT, "source")
    began = time.monotonic()
    sandbox.wait_until(lambda: host_listening("tcp", PORT), AUTO_DEADLINE, "mirror")
    appeared = time.monotonic() - began
    down = transfer(["download", "127.0.0.1", str(PORT), str(1 << 20)])
    assert (down["got"], down["got_sha"]) == (1 << 20, down["expected_sha"])
    sandbox.stop_popen(server)
    began = time.monotonic()
    sandbox.wait_until(lambda: not host_listening("tcp", PORT), AUTO_DEADLINE, "release")
    assert appeared < AUTO_DEADLINE and time.monotonic() - began < AUTO_DEADLINE


def test_auto_udp_mirrors_a_container_udp_server(pasta_net, container) -> None:
    start(pasta_net, container, "-u", "auto")
    with Responder(whoami, [socket_in(container.path, socket.AF_INET, bind=("", PORT))]):
        sandbox.wait_until(lambda: host_listening("udp", PORT), AUTO_DEADLINE, "udp mirror")
        reply, _peer = udp_ask(None, ("127.0.0.1", PORT))
        assert reply.decode().split()[0] == HOST_V4
    sandbox.wait_until(lambda: not host_listening("udp", PORT), AUTO_DEADLINE, "udp release")


def test_auto_both_directions_without_loops(pasta_net, container) -> None:
    """-T auto mirrors a host loopback server into the container; a container server
    mirrored by -t is not mirrored back by -T (our own listeners are never servers)."""
    pasta_net.start(["--config-net"])
    container.wait_for_address(HOST_V6)

    def ns_listening(address: str, port: int) -> bool:
        return sandbox.Endpoint("tcp", address, port) in container.listening()

    with socket_in(None, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", PORT + 1)):
        sandbox.wait_until(lambda: ns_listening("127.0.0.1", PORT + 1), AUTO_DEADLINE,
                           "-T mirror")
    with socket_in(container.path, socket.AF_INET, socket.SOCK_STREAM, (HOST_V4, PORT)):
        sandbox.wait_until(lambda: host_listening("tcp", PORT), AUTO_DEADLINE, "-t mirror")
        time.sleep(2 * 1.0 + 0.5)  # two scans: a -T mirror of the -t mirror would be there
        assert not ns_listening("127.0.0.1", PORT)


def test_auto_range_limits_the_mirrored_ports(pasta_net, container) -> None:
    start(pasta_net, container, "-t", f"{PORT}-{PORT + 1},auto")
    serve(container, PORT + 1, "source")
    serve(container, PORT + 2, "source")
    sandbox.wait_until(lambda: host_listening("tcp", PORT + 1), AUTO_DEADLINE, "mirror")
    time.sleep(1.2)
    assert not host_listening("tcp", PORT) and not host_listening("tcp", PORT + 2)


def test_auto_skips_ports_taken_on_the_host_quietly(pasta_net, container) -> None:
    """In the foreground, where stderr stays open: not a word about the taken port."""
    with socket_in(None, socket.AF_INET6, socket.SOCK_STREAM, ("::", PORT)):
        running = pasta_net.start(["--config-net", *NONE[2:], "-t", "auto"], foreground=True)
        container.wait_for_address(HOST_V6)
        serve(container, PORT, "source")
        serve(container, PORT + 1, "source")
        sandbox.wait_until(lambda: host_listening("tcp", PORT + 1), AUTO_DEADLINE, "mirror")
        time.sleep(1.5)  # one more scan trying PORT again
    assert str(PORT) not in running.stderr, running.stderr


# ------------------------------------------------------ errors and exit --
def test_bind_conflict_is_an_error_with_pasta_wording(pasta_net, container) -> None:
    with socket_in(None, socket.AF_INET, socket.SOCK_STREAM, ("0.0.0.0", PORT)):
        result = pasta_net.run_cli(["--config-net", "--netns", str(container.path),
                                    *NONE[2:], "-t", f"{PORT}-{PORT}:80-80"])
    assert result.returncode == 1
    assert (f"Failed to bind port {PORT} (Address already in use) for option "
            f"'-t {PORT}-{PORT}:80-80', exiting") in result.stderr
    assert "Traceback" not in result.stderr, "trio's ExceptionGroup must not show"
    assert not any(a.ifname != "lo" for a in container.addresses()), "nothing left behind"


def test_exclusions_only_spec_skips_taken_ports_unless_none_is_left(pasta_net,
                                                                   container) -> None:
    """``-t ~1-8799,~8802-65535`` means "all other ports" (8800 and 8801), best effort:
    a taken one is skipped; with both taken, nothing can be forwarded and that is fatal."""
    spec = f"~1-{PORT - 1},~{PORT + 2}-65535"
    with (socket_in(None, socket.AF_INET6, socket.SOCK_STREAM, ("::", PORT)),
          socket_in(None, socket.AF_INET6, socket.SOCK_STREAM, ("::", PORT + 1))):
        result = pasta_net.run_cli(["--config-net", "--netns", str(container.path),
                                    *NONE[2:], "-t", spec])
    assert result.returncode == 1
    assert f"Failed to bind any port for option '-t {spec}', exiting" in result.stderr
    with socket_in(None, socket.AF_INET6, socket.SOCK_STREAM, ("::", PORT)):
        start(pasta_net, container, "-t", spec)
        assert peer_seen(container, PORT + 1, ("127.0.0.1", PORT + 1)) == HOST_V4


def test_sigterm_closes_listeners_and_spliced_connections(pasta_net, container) -> None:
    running = start(pasta_net, container, "-t", str(PORT), "-T", str(PORT + 1))
    client, server = spliced_pair(container, PORT)
    with client, server:
        assert running.stop() in (0, None)
        with pytest.raises(ConnectionResetError):  # we reset what we splice as we go
            client.recv(10)
    for address in (("127.0.0.1", PORT), ("::", PORT)):
        with socket.create_server(address, family=socket.AF_INET6 if ":" in address[0]
                                  else socket.AF_INET):
            pass
    with socket_in(container.path, socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", PORT + 1)):
        pass


# ------------------------------------------------- local mode (an offline host) --
# pasta used to refuse to start without a default route ("External interface not
# usable", podman #23566), which kept rootless containers from starting offline; since
# 2024 it gives the namespace link-local addresses instead, and so do we. The fixture
# takes the sandbox host's default routes away; the remote stays reachable on-link but
# cannot be answered, so every transfer here runs between the namespace and the host.
LOCAL_V4, LOCAL_GATEWAY_V4 = "169.254.2.1", "169.254.2.2"
LOCAL_SIZE = 8 << 20
FOLLOW_DEADLINE = 2.0


@pytest.fixture
def offline_host(topology: sandbox.Topology) -> Iterator[None]:
    """The sandbox host without its default routes for the test."""
    sandbox.run_command(["ip", "route", "del", "default"])
    sandbox.run_command(["ip", "-6", "route", "del", "default"])
    try:
        yield
    finally:
        sandbox.run_command(["ip", "route", "replace", "default", "via", sandbox.GATEWAY_V4])
        sandbox.run_command(["ip", "-6", "route", "replace", "default", "via",
                             sandbox.GATEWAY_V6])


def start_offline(pasta_net: sandbox.ProgramRunner, container: sandbox.Container,
                  *args: str) -> sandbox.Running:
    """pasta-net with --config-net on the offline host; the namespace in local mode."""
    running = pasta_net.start(["--config-net", "-u", "none", "-U", "none", "-T", "none", *args])
    address = container.wait_for_address(LOCAL_V4)
    assert str(address.interface) == f"{LOCAL_V4}/16"
    assert address.ifname == "tap0", "pasta's name when there is no host interface to copy"
    assert {r.gateway for r in container.routes() if r.dst == "default"} == {LOCAL_GATEWAY_V4}
    assert not [a for a in container.addresses()
                if a.interface.version == 6 and a.interface.is_global]
    return running


@pytest.mark.usefixtures("offline_host")
def test_offline_host_gives_link_local_addresses_that_reach_the_host(
    pasta_net, container, host_serve
) -> None:
    """The gateway address is the host's loopback; an inbound forward reaches the
    namespace's local address, spliced."""
    running = start_offline(pasta_net, container, "-t", f"{PORT}-{PORT + 1}")
    assert "switch to local mode" in running.stderr
    host_serve(PORT + 10, "sink")
    host_serve(PORT + 11, "source")
    upload_and_download(LOCAL_GATEWAY_V4, PORT + 10, container, LOCAL_SIZE)  # tap path
    serve(container, PORT, "sink")
    serve(container, PORT + 1, "source")
    upload_and_download("127.0.0.1", PORT, None, LOCAL_SIZE)  # spliced


@pytest.mark.usefixtures("offline_host")
def test_forwards_without_splice_reach_the_local_address(pasta_net, container) -> None:
    start_offline(pasta_net, container, "--no-splice", "-t", f"{PORT}-{PORT + 1}")
    serve(container, PORT, "sink")
    serve(container, PORT + 1, "source")
    upload_and_download("127.0.0.1", PORT, None, LOCAL_SIZE)


@pytest.mark.usefixtures("offline_host")
def test_a_named_interface_is_not_replaced_by_local_mode(pasta_net) -> None:
    """-i names the template: missing, it is an error (pasta's too); present, it is
    copied even without a default route."""
    args = ["--config-net", "-t", "none", "-u", "none", "-T", "none", "-U", "none"]
    result = pasta_net.run_cli([*args, "-i", "eth9", "--", "true"], timeout=30)
    assert result.returncode == 1
    assert "External interface not usable: No such interface: eth9" in result.stderr
    script = f"ip -o addr show up0 | grep -q {HOST_V4}/24"
    result = pasta_net.run_cli([*args, "-i", "up0", "--", "sh", "-c", script], timeout=30)
    assert result.returncode == 0, result.stderr


@pytest.mark.usefixtures("offline_host")
def test_follow_host_leaves_local_mode_when_the_network_comes(pasta_net, container) -> None:
    """A late network (boot, resume, a cable): the host's default route appears and the
    namespace takes the host's address and gateway, and reaches the remote."""
    start_offline(pasta_net, container, "-t", "none", "--follow-host")
    sandbox.run_command(["ip", "route", "replace", "default", "via", sandbox.GATEWAY_V4])
    sandbox.run_command(["ip", "-6", "route", "replace", "default", "via", sandbox.GATEWAY_V6])

    def online() -> bool:
        addresses = {str(a.interface.ip) for a in container.addresses()}
        gateways = {r.gateway for r in container.routes() if r.dst == "default"}
        return {HOST_V4, HOST_V6} <= addresses and sandbox.GATEWAY_V4 in gateways
    sandbox.wait_until(online, FOLLOW_DEADLINE, "the namespace leaving local mode")

    assert LOCAL_V4 not in {str(a.interface.ip) for a in container.addresses()}
    container.run(["ping", "-c", "1", "-W", "5", sandbox.REMOTE_V4])

