"""passt mode: a VM (qemu ``-netdev stream``) served over a UNIX domain socket.

The same engine as pasta mode behind a second frame device (shell/qemu.py). What differs:

- No namespace and no tap: the VM configures itself through DHCP, NDP/RA and DHCPv6,
  with the addresses pasta mode would copy from the host (``launch.address_plan``), and
  the engine learns the VM's MAC from its frames.
- No offloads: nothing on the socket carries a virtio-net header, so the core computes
  every checksum and cuts MSS-sized segments (``offload=False``).
- No splice: forwarded ports (-t/-u) always take the frame path, as there is no
  loopback on the other side to splice to.

Order: the socket is bound (or ``-F`` adopted) and the qemu command line printed before
daemonising, as passt does, so the user sees the path or the error on the terminal.
Everything else (host configuration, privileges, forwards) happens where pasta mode
does it, through the same ``launch.run_service``.

The socket is owner-only (bound under umask 177, so 0600 from the start): stricter than
old passt's 0666, because whoever can connect gets the VM's network.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

from pasta_net import launch
from pasta_net.core.frames import BROADCAST_MAC
from pasta_net.netconf import NetlinkHelper
from pasta_net.options import Options
from pasta_net.shell.control import is_served, listen_unix, unlink_socket
from pasta_net.shell.qemu import QemuStream

__all__ = ["SOCKET_TEMPLATE", "bind_socket", "qemu_hint", "run"]

log = logging.getLogger("pasta_net")

SOCKET_TEMPLATE = "/tmp/passt_{}.socket"
"""passt's default paths, tried from 1 to :data:`SOCKET_MAX`."""
SOCKET_MAX = 64


def run(options: Options, prog: str, netlink: NetlinkHelper) -> int:
    """Run passt mode as the options say; the process exit status. ``netlink`` reads the
    host (started early by ``cli.main``) and is closed before we serve."""
    launch.own_process(options, netlink)
    launch.setup_logging(options, prog)
    with netlink:
        try:
            stream, path = _open_stream(options)
        except launch.StartupError as exc:
            log.error("%s", exc)
            return 1
        return launch.run_service(
            options, lambda ready: _serve(options, stream, path, ready, netlink), netlink)


def _open_stream(options: Options) -> tuple[QemuStream, str | None]:
    """The frame device: the ``-F`` socket, or a listener on ``-s`` or a free default path."""
    if options.fd is not None:
        return QemuStream(client=_adopt(options.fd)), None
    listener, path = bind_socket(options.socket_path)
    log.info("%s", qemu_hint(path))
    return QemuStream(listener=listener, one_off=options.one_off), path


def _serve(options: Options, stream: QemuStream, path: str | None,
           ready: Callable[[], None], netlink: NetlinkHelper) -> None:
    async def client_gone() -> str:
        await stream.finished.wait()
        return "client disconnected"

    try:
        host = launch.read_host(options, netlink)
        netlink.close()
        plan = launch.address_plan(options, host)
        config = launch.engine_config(options, plan, host, BROADCAST_MAC, offload=False)
        launch.serve_frames(options, config, stream, ready, client_gone)
    finally:
        stream.close()
        if path is not None and not is_served(path):
            with contextlib.suppress(OSError):
                unlink_socket(path)


def qemu_hint(path: str) -> str:
    """What to tell the user, as passt does (qemu 7.2 brought ``-netdev stream``)."""
    return ("You can now start qemu (>= 7.2, with commit 13c6be96618c):\n"
            "    kvm ... -device virtio-net-pci,netdev=s "
            f"-netdev stream,id=s,server=off,addr.type=unix,addr.path={path}")


# ------------------------------------------------------------------ sockets --
def bind_socket(path: str | None) -> tuple[socket.socket, str]:
    """A listening socket on ``path``, or on the first free default path.

    A path is free when nothing answers a connect there; a socket file left by a server
    that is gone is removed first (as passt does). Raises :class:`launch.StartupError`.
    """
    candidates = [path] if path else [SOCKET_TEMPLATE.format(n) for n in
                                      range(1, SOCKET_MAX + 1)]
    for candidate in candidates:
        if is_served(candidate):
            if path:
                raise launch.StartupError(f"Socket path {path} already in use")
            continue
        try:
            return listen_unix(candidate, 1), candidate
        except OSError as exc:
            if path:
                raise launch.StartupError(
                    f"Unable to bind socket {path}: {exc.strerror}") from None
    raise launch.StartupError(f"No free socket path from {candidates[0]} to {candidates[-1]}")


def _adopt(fd: int) -> socket.socket:
    """``-F FD``: a connected stream socket we inherited."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise launch.StartupError(f"Invalid --fd {fd}: {exc.strerror}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise launch.StartupError(f"--fd {fd} is not a stream socket")
    return sock
