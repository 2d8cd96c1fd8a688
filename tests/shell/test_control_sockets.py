"""The control sockets against a hub with no namespace behind it: commands, the two
socket dialects, and what misbehaving clients cannot do."""

from __future__ import annotations

import functools
import ipaddress
import json
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import trio

from pasta_net.core.control import MAX_LINE
from pasta_net.core.engine import Engine, EngineConfig
from pasta_net.core.plan import AddressPlan
from pasta_net.core.portspec import PortSpec
from pasta_net.options import Options
from pasta_net.shell import control
from pasta_net.shell.control import ControlError, Controller, open_control
from pasta_net.shell.forwarding import Forwarding
from pasta_net.shell.forwards import ForwardTable
from pasta_net.shell.hub import Hub
from pasta_net.shell.listeners import ListenError

NS4, NS6 = "198.51.100.2", "2001:db8:1::2"
PLAN = AddressPlan(our_mac=bytes.fromhex("9a559a559a55"),
                   addr4=ipaddress.ip_address(NS4).packed,
                   gw4=ipaddress.ip_address("198.51.100.1").packed,
                   addr6=ipaddress.ip_address(NS6).packed)


class NullDevice:
    """A frame device that never has frames (the hub only needs an fd to watch)."""

    def __init__(self) -> None:
        self._pair = socket.socketpair()
        self.fd = self._pair[0].fileno()
        self.written: list[bytes] = []

    def read_batch(self) -> list[memoryview]:
        return []

    def write_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        self.written += [bytes(f) for f in frames]

    def close(self) -> None:
        for sock in self._pair:
            sock.close()


@pytest.fixture
def hub() -> Iterator[Hub]:
    device = NullDevice()
    hub = Hub(Engine(EngineConfig(plan=PLAN)), device)
    yield hub
    hub.close()
    device.close()


class Recorder:
    """A binder that binds nothing and remembers what is bound."""

    def __init__(self) -> None:
        self.bound: list[str] = []

    def __call__(self, spec: PortSpec) -> Callable[[], None]:
        self.bound.append(spec.text)
        return lambda: self.bound.remove(spec.text)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def controller(hub: Hub, recorder: Recorder) -> Controller:
    forwards = ForwardTable()
    forwards.register("-t", recorder)
    forwards.register("-u", recorder)
    return Controller(hub, forwards, (49152, 65535))


def ask(controller: Controller, **request: object) -> dict:
    return json.loads(controller.handle_line(json.dumps(request).encode()))


def slirp(controller: Controller, request: dict) -> dict:
    return json.loads(controller.handle_slirp(json.dumps(request).encode()))


# ----------------------------------------------------------------- commands --
async def test_add_list_remove(controller: Controller, recorder: Recorder) -> None:
    assert ask(controller, command="add", option="-t", spec="8080:80") == {"return": {"id": 1}}
    assert ask(controller, command="add", option="-u", spec="5353:53") == {"return": {"id": 2}}
    assert recorder.bound == ["8080:80", "5353:53"]
    assert ask(controller, command="list") == {"return": {"forwards": [
        {"id": 1, "option": "-t", "proto": "tcp", "direction": "host-to-ns", "spec": "8080:80"},
        {"id": 2, "option": "-u", "proto": "udp", "direction": "host-to-ns", "spec": "5353:53"},
    ]}}
    assert ask(controller, command="remove", id=1) == {"return": {}}
    assert recorder.bound == ["5353:53"]
    assert ask(controller, command="remove", id=1) == {
        "error": {"desc": "no forward with id 1"}}


async def test_refusals(controller: Controller) -> None:
    ask(controller, command="add", option="-t", spec="8000-8010")
    assert ask(controller, command="add", option="-t", spec="8005")["error"]["desc"] == (
        "Overlapping port specifier '8005' for -t: ports also forwarded by '-t 8000-8010' "
        "(id 1)")
    assert ask(controller, command="add", option="-T", spec="80")["error"]["desc"] == (
        "-T forwards are not available in this instance")


async def test_a_family_the_namespace_lacks_is_refused(hub: Hub, controller: Controller) -> None:
    hub.engine.replan(PLAN.__class__(our_mac=PLAN.our_mac, addr4=PLAN.addr4),
                      hub.engine.config.mapping, 0.0)
    assert ask(controller, command="add", option="-t", spec="[::1]/80")["error"]["desc"] == (
        "the namespace has no IPv6 address to forward ::1 to")


async def test_bind_failures_are_replies_not_exits(hub: Hub) -> None:
    def failing(spec: PortSpec) -> Callable[[], None]:
        raise ListenError(f"Failed to bind port 80 (Permission denied) for option "
                          f"'-t {spec.text}', exiting")

    forwards = ForwardTable()
    forwards.register("-t", failing)
    controller = Controller(hub, forwards, (49152, 65535))
    assert ask(controller, command="add", option="-t", spec="80") == {"error": {
        "desc": "Failed to bind port 80 (Permission denied) for option '-t 80'"}}
    assert len(forwards) == 0


async def test_stats_follow_the_counters(hub: Hub, controller: Controller) -> None:
    ask(controller, command="add", option="-t", spec="8080")
    hub.traffic.frames_from_ns += 3
    hub.traffic.bytes_from_ns += 300
    hub.engine.drop("unsupported", "test")
    stats = ask(controller, command="stats")["return"]
    assert stats["flows"] == {"tcp": 0, "udp": 0, "icmp": 0}
    assert stats["from_ns"] == {"frames": 3, "bytes": 300}
    assert stats["to_ns"] == {"frames": 0, "bytes": 0}
    assert stats["drops"] == {"unsupported": 1}
    assert stats["forwards"] == 1
    assert stats["uptime"] >= 0


async def test_slirp4netns_add_list_remove(controller: Controller, recorder: Recorder) -> None:
    """The man page's examples, with this namespace's address as guest_addr."""
    add = {"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080, "guest_addr": NS4,
        "guest_port": 80}}
    assert slirp(controller, add) == {"return": {"id": 1}}
    assert recorder.bound == ["0.0.0.0/8080:80"]
    assert slirp(controller, {"execute": "list_hostfwd"}) == {"return": {"entries": [{
        "id": 1, "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080,
        "guest_addr": NS4, "guest_port": 80}]}}
    remove = {"execute": "remove_hostfwd", "arguments": {"id": 1}}
    assert slirp(controller, remove) == {"return": {}}
    assert slirp(controller, remove) == {"error": {
        "desc": "bad request: remove_hostfwd: bad arguments.id: no forward with id 1"}}


async def test_slirp4netns_guest_addr_must_be_ours(controller: Controller) -> None:
    add = {"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}
    assert slirp(controller, add) == {"error": {"desc": (
        "bad request: add_hostfwd: bad arguments.guest_addr: 10.0.2.100 is not the "
        f"namespace's address ({NS4})")}}


async def test_real_listeners_come_and_go(hub: Hub) -> None:
    forwarding = Forwarding(hub, None, Options())  # passt-like: the tap path only
    forwards = ForwardTable()
    for option in ("-t", "-u"):
        forwards.register(option, functools.partial(forwarding.bind, option))
    controller = Controller(hub, forwards, (49152, 65535), auto=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tcp = ask(controller, command="add", option="-t", spec=f"127.0.0.1/{port}:80")
    udp = ask(controller, command="add", option="-u", spec=f"127.0.0.1/{port}:53")
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass  # the listener's backlog takes it
    sockets_with_udp = len(hub.sockets)
    ask(controller, command="remove", id=tcp["return"]["id"])
    ask(controller, command="remove", id=udp["return"]["id"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
    assert ask(controller, command="add", option="-t", spec="auto")["error"]["desc"] == (
        "'auto' forwarding is only available in pasta mode ('auto')")
    assert len(hub.sockets) == sockets_with_udp - 1  # the UDP listener is gone from the hub
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # nothing holds the port any more


# ------------------------------------------------------------------ sockets --
@pytest.fixture
def short_timeouts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(control, "IDLE_TIMEOUT", 0.5)
    monkeypatch.setattr(control, "REQUEST_TIMEOUT", 0.5)
    monkeypatch.setattr(control, "SEND_TIMEOUT", 0.5)


async def connect(path: Path) -> trio.SocketStream:
    return await trio.open_unix_socket(str(path))


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


async def read_line(stream: trio.SocketStream, buffer: bytearray) -> bytes:
    while b"\n" not in buffer:
        chunk = await stream.receive_some(65536)
        assert chunk, "closed before a whole line"
        buffer += chunk
    end = buffer.index(b"\n")
    line = bytes(buffer[:end])
    del buffer[: end + 1]
    return line


async def flood_until_closed(stream: trio.SocketStream) -> None:
    while True:
        await stream.send_all(b"x" * 65536)


async def test_native_socket_answers_lines_in_order(tmp_path: Path,
                                                    controller: Controller) -> None:
    path = tmp_path / "ctl"
    async with trio.open_nursery() as nursery:
        await open_control(str(path), None, controller, nursery)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        stream = await connect(path)
        await stream.send_all(b'{"command":"add","option":"-t","spec":"8080"}\n\n'
                              b'{"command":"list"}\n{"command":')
        buffer = bytearray()
        assert json.loads(await read_line(stream, buffer)) == {"return": {"id": 1}}
        assert json.loads(await read_line(stream, buffer))["return"]["forwards"][0]["id"] == 1
        await stream.send_all(b'"stats"}')  # the last request may lack its line end
        await stream.send_eof()
        assert json.loads(await read_all(stream))["return"]["forwards"] == 1
        nursery.cancel_scope.cancel()
    assert not path.exists()  # removed on the way out


async def test_slirp_socket_one_request_per_connection(tmp_path: Path,
                                                       controller: Controller) -> None:
    path = tmp_path / "api"
    async with trio.open_nursery() as nursery:
        await open_control(None, str(path), controller, nursery)
        stream = await connect(path)
        await stream.send_all(b'{"execute": "list_hostfwd"}')
        await stream.send_eof()
        assert await read_all(stream) == b'{"return":{"entries":[]}}'
        # a client that waits for the reply without shutting down its side (slirp4netns
        # answers after one read) is answered too
        stream = await connect(path)
        await stream.send_all(b'{"execute": "list_hostfwd"}\n')
        with trio.fail_after(2):
            assert await read_all(stream) == b'{"return":{"entries":[]}}'
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("short_timeouts")
async def test_a_line_left_unfinished_by_a_silent_client_is_not_run(
        tmp_path: Path, controller: Controller) -> None:
    path = tmp_path / "ctl"
    async with trio.open_nursery() as nursery:
        await open_control(str(path), None, controller, nursery)
        stream = await connect(path)
        await stream.send_all(b'{"command":"add","option":"-t","spec":"8080"}')
        with trio.fail_after(2):
            assert await read_all(stream) == b"", "dropped after IDLE_TIMEOUT, unanswered"
        assert list(controller.forwards) == [], "and nothing was added"
        nursery.cancel_scope.cancel()


@pytest.mark.usefixtures("short_timeouts")
async def test_silent_and_flooding_clients_are_dropped(tmp_path: Path,
                                                       controller: Controller) -> None:
    native, api = tmp_path / "ctl", tmp_path / "api"
    async with trio.open_nursery() as nursery:
        await open_control(str(native), str(api), controller, nursery)
        silent = [await connect(native) for _ in range(control.MAX_CONNECTIONS - 1)]
        # the one slot left still serves, while the silent ones wait
        stream = await connect(native)
        await stream.send_all(b'{"command":"list"}\n')
        assert json.loads(await read_line(stream, bytearray())) == {
            "return": {"forwards": []}}
        await stream.aclose()
        with trio.fail_after(2):  # and the silent ones are dropped after IDLE_TIMEOUT
            for client in silent:
                assert await read_all(client) == b""
        flood = await connect(native)
        with trio.fail_after(2), pytest.raises(trio.BrokenResourceError):
            await flood_until_closed(flood)
        api_flood = await connect(api)
        await api_flood.send_all(b"0" * 4096)
        with trio.fail_after(2):
            assert await read_all(api_flood) == (
                b'{"error":{"desc":"bad request: too large message"}}')
        api_silent = await connect(api)
        with trio.fail_after(2):
            assert await read_all(api_silent) == (
                b'{"error":{"desc":"bad request: cannot parse JSON"}}')
        nursery.cancel_scope.cancel()


async def test_an_over_long_line_gets_an_error_then_the_door(tmp_path: Path,
                                                             controller: Controller) -> None:
    path = tmp_path / "ctl"
    async with trio.open_nursery() as nursery:
        await open_control(str(path), None, controller, nursery)
        stream = await connect(path)
        await stream.send_all(b"x" * (MAX_LINE + 1))
        with trio.fail_after(2):
            reply = await read_all(stream)
        assert json.loads(reply) == {"error": {"desc": f"request longer than {MAX_LINE} bytes"}}
        nursery.cancel_scope.cancel()


async def test_a_stale_socket_is_replaced_but_a_file_is_not(tmp_path: Path,
                                                            controller: Controller) -> None:
    stale = tmp_path / "stale"
    with socket.socket(socket.AF_UNIX) as old:
        old.bind(str(stale))
    regular = tmp_path / "regular"
    regular.write_text("keep me")
    async with trio.open_nursery() as nursery:
        await open_control(str(stale), None, controller, nursery)
        with pytest.raises(ControlError, match=f"Failed to bind control socket {regular}"):
            await open_control(str(regular), None, controller, nursery)
        nursery.cancel_scope.cancel()
    assert regular.read_text() == "keep me"


async def test_a_socket_another_instance_serves_is_not_taken(tmp_path: Path,
                                                             controller: Controller) -> None:
    path = tmp_path / "ctl"
    async with trio.open_nursery() as nursery:
        await open_control(str(path), None, controller, nursery)
        with pytest.raises(ControlError, match="in use by another instance"):
            await open_control(str(path), None, controller, nursery)
        stream = await connect(path)  # the first instance still answers there
        await stream.send_all(b'{"command":"list"}\n')
        assert json.loads(await read_line(stream, bytearray())) == {"return": {"forwards": []}}
        nursery.cancel_scope.cancel()
