"""The control sockets of a running instance: ``-c/--control`` and ``--api-socket``.

Both are UNIX stream sockets created owner-only (0600), bound before we report "ready",
and removed when we exit. The native one takes JSON lines, the slirp4netns one a single
request per connection (core/control.py has both grammars and every reply's shape).

Why trio tasks rather than the hub's epoll set: control traffic is rare and small, and
what it needs is per-connection deadlines and cleanup, which trio gives with
``move_on_after`` and nurseries, while the hub's rule is "drain until EAGAIN, never
wait". Every task runs on the hub's thread, so commands touch the engine and the
forward table with no lock, and between two awaits each does only bounded work (one
request of bounded size), so the hub is never starved:

- a client that says nothing is dropped after :data:`IDLE_TIMEOUT` (native) or
  :data:`REQUEST_TIMEOUT` (slirp4netns), and one that does not read its replies after
  :data:`SEND_TIMEOUT`;
- requests are bounded (``MAX_LINE``, ``SLIRP_MAX_REQUEST``), and a line is searched for
  its end only in the bytes just received, so a client trickling one byte at a time
  costs O(bytes), not O(bytes²);
- at most :data:`MAX_CONNECTIONS` clients per socket are served at once; others wait
  in the listen backlog, where they cost us nothing.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import logging
import os
import socket
import stat
from collections import Counter
from collections.abc import Awaitable, Callable

import trio

from pasta_net.core.control import (
    MAX_LINE,
    SLIRP_MAX_REQUEST,
    AddForward,
    Command,
    ListForwards,
    ListHostfwd,
    ReadStats,
    RemoveForward,
    Request,
    RequestError,
    Stats,
    check_runtime_spec,
    error_reply,
    forward_json,
    hostfwd_json,
    parse_line,
    parse_slirp,
    reply,
)
from pasta_net.core.portspec import PortRange
from pasta_net.shell.forwards import ForwardTable
from pasta_net.shell.hub import Hub
from pasta_net.shell.listeners import ListenError

__all__ = [
    "Bound",
    "ControlError",
    "Controller",
    "bind_control",
    "is_served",
    "listen_unix",
    "open_control",
    "serve_control",
    "unlink_socket",
]

log = logging.getLogger("pasta_net.control")

IDLE_TIMEOUT = 60.0
REQUEST_TIMEOUT = 5.0
SEND_TIMEOUT = 5.0
MAX_CONNECTIONS = 8
_RECV_SIZE = 4096
_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})

Handler = Callable[[trio.SocketStream, "Controller"], Awaitable[None]]


class ControlError(Exception):
    """A control socket cannot be created; the message is ready for the user."""


class Controller:
    """Carries out control commands on a running hub and its forward table."""

    def __init__(self, hub: Hub, forwards: ForwardTable, ephemeral: PortRange,
                 auto: bool = True) -> None:
        self.hub = hub
        self.forwards = forwards
        self.ephemeral = ephemeral
        self.auto = auto
        """Whether ``auto`` specs can be added (something mirrors ports: pasta mode)."""
        self.started = trio.current_time()
        self._dispatch: dict[type, Callable] = {
            ListForwards: self._list,
            ListHostfwd: self._list_hostfwd,
            AddForward: self._add,
            RemoveForward: self._remove,
            ReadStats: lambda _command: self.stats().to_json(),
        }

    def handle_line(self, line: bytes) -> bytes:
        """The reply to one native request line (without its line end)."""
        return self._answer(line, parse_line)

    def handle_slirp(self, data: bytes) -> bytes:
        """The reply to one slirp4netns API request."""
        return self._answer(data, parse_slirp)

    def _answer(self, data: bytes, parse: Callable[[bytes, PortRange], Request]) -> bytes:
        try:
            request = parse(data, self.ephemeral)
        except RequestError as exc:
            return error_reply(str(exc))
        try:
            return reply(self._dispatch[type(request.command)](request.command))
        except (RequestError, ListenError) as exc:
            return error_reply(request.error_prefix + str(exc).removesuffix(", exiting"))
        except Exception as exc:  # a bug here must not take the data path down with it
            log.exception("control request %r failed", request.command)
            return error_reply(f"{request.error_prefix}internal error: {exc}")

    def stats(self) -> Stats:
        hub = self.hub
        engine = hub.engine
        drops = Counter(engine.drops)
        # TapDevice counts frames the tap refused; other devices may not count any.
        drops["tap-full"] += getattr(hub.tap, "write_drops", 0)
        traffic = hub.traffic
        return Stats(
            uptime=trio.current_time() - self.started, flows=engine.flow_counts(),
            frames_from_ns=traffic.frames_from_ns, bytes_from_ns=traffic.bytes_from_ns,
            frames_to_ns=traffic.frames_to_ns, bytes_to_ns=traffic.bytes_to_ns,
            drops=+drops, forwards=len(self.forwards))

    # ------------------------------------------------------------ commands --
    def _list(self, _command: Command) -> dict[str, object]:
        return {"forwards": [forward_json(f) for f in self.forwards]}

    def _list_hostfwd(self, _command: Command) -> dict[str, object]:
        plan = self.hub.engine.plan
        entries = (hostfwd_json(f, plan.addr4, plan.addr6) for f in self.forwards)
        return {"entries": [e for e in entries if e is not None]}

    def _add(self, command: AddForward) -> dict[str, object]:
        check_runtime_spec(command.spec, auto=self.auto)
        self._check_families(command)
        forward = self.forwards.add(command.option, command.spec)
        log.info("forward %d added: %s %s", forward.id, forward.option, forward.spec.text)
        return {"id": forward.id}

    def _check_families(self, command: AddForward) -> None:
        """Listening addresses and slirp4netns' guest_addr must fit the namespace now."""
        plan = self.hub.engine.plan
        ns_addrs = {4: plan.addr4, 6: plan.addr6}
        for rule in command.spec.forwards:
            if rule.addr is not None and ns_addrs[rule.addr.version] is None:
                raise RequestError(f"the namespace has no IPv{rule.addr.version} address "
                                   f"to forward {rule.addr} to")
        guest = command.guest_addr
        if guest is not None and guest.packed != ns_addrs[guest.version]:
            ours = ns_addrs[guest.version]
            raise RequestError(f"bad arguments.guest_addr: {guest} is not the namespace's "
                               f"address ({ipaddress.ip_address(ours) if ours else 'none'})")

    def _remove(self, command: RemoveForward) -> dict[str, object]:
        forward = self.forwards.remove(command.id)
        log.info("forward %d removed: %s %s", forward.id, forward.option, forward.spec.text)
        return {}


# ------------------------------------------------------------------ sockets --
async def open_control(control_path: str | None, api_socket: str | None,
                       controller: Controller, nursery: trio.Nursery) -> None:
    """Bind the control sockets that were asked for and serve them in ``nursery``.

    Binding happens here, before the caller reports "ready": a client may connect as
    soon as we are. Raises :class:`ControlError` when a path cannot be used.
    """
    serve_control(bind_control(control_path, api_socket), controller, nursery)


Bound = list[tuple[socket.socket, str, int, Handler]]
"""(listening socket, path, the path's inode, handler) of each control socket."""


def bind_control(control_path: str | None, api_socket: str | None) -> Bound:
    """Bind the control sockets that were asked for, not serving them yet: the daemon
    binds them before it gives up root (nobody may not create them where root may), and
    serves them once trio runs. Raises :class:`ControlError`."""
    bound: Bound = []
    for path, handler in ((control_path, _native_client), (api_socket, _slirp_client)):
        if path:
            try:
                sock = _bind_unix(path)
                # Its inode now, while we may: the socket's directory may be closed to
                # the user we become (it says at exit whether the path is still ours).
                bound.append((sock, path, os.stat(path).st_ino, handler))
            except ControlError:
                for sock, *_rest in bound:
                    sock.close()
                raise
    return bound


def serve_control(bound: Bound, controller: Controller, nursery: trio.Nursery) -> None:
    """Serve sockets from :func:`bind_control` in ``nursery``."""
    for listener, path, inode, handler in bound:
        nursery.start_soon(_serve, listener, path, inode, handler, controller)


def _bind_unix(path: str) -> socket.socket:
    try:
        return listen_unix(path, MAX_CONNECTIONS)
    except OSError as exc:
        why = ("in use by another instance" if exc.errno == errno.EADDRINUSE
               and is_served(path) else exc.strerror)
        raise ControlError(f"Failed to bind control socket {path}: {why}") from exc


def listen_unix(path: str, backlog: int) -> socket.socket:
    """A listening UNIX socket at ``path``, mode 0600 from the start (umask, not chmod
    after). Bind first, and replace a socket file only when the bind finds one nobody
    serves (anything else there is not ours): unlinking before binding let two
    instances started together take the same path. Raises OSError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    mask = os.umask(0o177)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or is_served(path):
                raise
            unlink_socket(path)  # left by a server that is gone
            sock.bind(path)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(mask)
    return sock


def unlink_socket(path: str) -> None:
    """Remove ``path`` if it is a socket file (never a file of another kind)."""
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def is_served(path: str) -> bool:
    """Whether a server (or something we may not touch) is at the UNIX socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        try:
            probe.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            return False
        except OSError:
            return True
    return True


async def _serve(sock: socket.socket, path: str, inode: int, handler: Handler,
                 controller: Controller) -> None:
    listener = trio.socket.from_stdlib_socket(sock)
    slots = trio.Semaphore(MAX_CONNECTIONS)
    try:
        async with trio.open_nursery() as nursery:
            while True:
                await slots.acquire()
                try:
                    conn, _addr = await listener.accept()
                except OSError as exc:
                    slots.release()
                    if exc.errno not in _CAPACITY_ERRNOS:
                        raise
                    log.warning("control socket %s: cannot accept: %s", path, exc.strerror)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(_client, conn, handler, controller, slots)
    finally:
        listener.close()
        _unlink_if_ours(path, inode)


def _unlink_if_ours(path: str, inode: int) -> None:
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except OSError:
        pass  # gone already, or in a directory only root (which we were) may change


async def _client(conn: trio.socket.SocketType, handler: Handler, controller: Controller,
                  slots: trio.Semaphore) -> None:
    stream = trio.SocketStream(conn)
    try:
        await handler(stream, controller)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client went away
    finally:
        conn.close()
        slots.release()


async def _send(stream: trio.SocketStream, data: bytes) -> bool:
    """Send a reply; False if the client did not take it in time."""
    with trio.move_on_after(SEND_TIMEOUT):
        await stream.send_all(data)
        return True
    return False


async def _native_client(stream: trio.SocketStream, controller: Controller) -> None:
    """JSON lines, answered in order until the client closes or idles."""
    buffer = bytearray()
    while True:
        data = b""
        with trio.move_on_after(IDLE_TIMEOUT) as idle:
            data = await stream.receive_some(_RECV_SIZE)
        if idle.cancelled_caught:
            return  # silent too long: a line it began is no request
        if not data:  # end of input (a last line without its line end still counts)
            if buffer.strip():
                await _send(stream, controller.handle_line(bytes(buffer)) + b"\n")
            return
        start = len(buffer)
        buffer += data
        while (end := buffer.find(b"\n", start)) >= 0:
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            start = 0
            if line.strip() and not await _send(stream, controller.handle_line(line) + b"\n"):
                return
        if len(buffer) > MAX_LINE:
            await _send(stream, error_reply(f"request longer than {MAX_LINE} bytes") + b"\n")
            return


async def _slirp_client(stream: trio.SocketStream, controller: Controller) -> None:
    """One request: read until the client shuts its side, or the request is complete
    JSON (slirp4netns answers after a single read), or it is too large, or time is up."""
    data = bytearray()
    with trio.move_on_after(REQUEST_TIMEOUT):
        while len(data) < SLIRP_MAX_REQUEST:
            chunk = await stream.receive_some(SLIRP_MAX_REQUEST - len(data))
            if not chunk:
                break
            data += chunk
            if chunk.rstrip().endswith(b"}") and _is_json(data):
                break
    await _send(stream, controller.handle_slirp(bytes(data)))


def _is_json(data: bytearray) -> bool:
    try:
        json.loads(data)
    except (ValueError, RecursionError):
        return False
    return True
