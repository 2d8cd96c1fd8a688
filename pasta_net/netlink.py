"""The netlink helper: a forked child that does our netlink work with pyroute2.

Why a child: pyroute2 costs about 12 MiB of resident memory and 0.2 s of imports (more
than trio); the long-running process never loads it. Why this module imports neither
attrs nor anything of ours that does: ``cli.main`` forks the helper before it loads
anything else, so the child starts on pyroute2 at once, on the other core, while the
parent loads the rest (attrs alone takes 40 ms here); the child never needs attrs. Its
answers are therefore plain values (a dict for the host, tuples for addressing), which
:mod:`pasta_net.netconf` turns into its records.

The child stays in the namespaces it was forked in (the host's). Work in another netns
comes with a netlink socket the caller opened there (a netlink socket talks to the
netns it was created in), passed with ``SCM_RIGHTS``. Requests and outcomes are
pickles, one per ``SOCK_SEQPACKET`` message; errors come back as
:class:`NetconfError` and are raised in the caller.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import socket
from collections.abc import Callable

__all__ = ["NetconfError", "NetlinkHelper", "NoDefaultRoute", "route_socket"]

_MAX_MESSAGE = 1 << 16
"""Bound of one pickled request or outcome."""


class NetconfError(Exception):
    """A netlink request failed; the message says which step and why."""


class NoDefaultRoute(NetconfError):
    """The host has no default route to take an interface from: offline, or not yet
    online. The one failure to read the host that is not an error (local mode)."""


class NetlinkHelper:
    """The parent's handle on the helper child (see the module docstring)."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self._pid: int | None = pid
        self._sock = sock
        self._owner = os.getpid()
        """Only the process that forked the helper may end it: not a daemon forked since."""

    @classmethod
    def start(cls) -> NetlinkHelper:
        """Fork the helper from the calling thread; it loads pyroute2 at once."""
        try:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:  # EMFILE
            raise NetconfError(f"Cannot start the netlink helper: {exc.strerror}") from None
        try:
            pid = os.fork()
        except OSError as exc:  # EAGAIN: out of processes (RLIMIT_NPROC)
            ours.close()
            theirs.close()
            raise NetconfError(f"Cannot start the netlink helper: {exc.strerror}") from None
        if pid == 0:
            ours.close()
            try:
                _helper_main(theirs)
            finally:
                os._exit(0)
        theirs.close()
        return cls(pid, ours)

    def ask_host(self, interface: str | None, want4: bool, want6: bool) -> None:
        """Have the host interface to copy read (see :func:`rtnl.read_host`); ask as soon
        as the options say which, and take the answer with :meth:`host` when it is
        needed: the child works meanwhile."""
        self._send("read_host", (interface, want4, want6), {})

    def host(self) -> dict[str, object]:
        """The fields :meth:`ask_host` asked for (only once)."""
        fields = self._outcome("read_host")
        assert isinstance(fields, dict)
        return fields

    def configure(self, ifname: str, **settings: object) -> None:
        """Bring ``ifname`` of the calling thread's netns up with addresses and default
        routes (see :func:`rtnl.configure_namespace`)."""
        _disable_dad(ifname)  # /proc/sys/net shows the calling thread's netns, not the child's
        with route_socket() as nl:
            self._request("configure_namespace", nl, ifname, **settings)

    def readdress(self, nl: socket.socket, ifname: str, old: tuple, new: tuple) -> None:
        """Move one address family of ``ifname`` from ``old`` to ``new``, each
        ``(addr, prefix, gw)`` (``--follow-host``), in the netns where ``nl`` (a
        :func:`route_socket`) was opened: any thread may wait for this one."""
        self._request("readdress_namespace", nl, ifname, old, new)

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        """End the helper, if we forked it (after a daemonising fork it is the
        parent's), and reap it. Closing again does nothing.

        Nothing the child may still be doing is wanted any more (loading pyroute2 after
        ``--help`` or a usage error, reading a host nobody will take after a failure):
        it is killed, not asked to exit, so that we never wait for it. ``shutdown`` first ends the
        socket for every process holding a copy of our end (a child forked since, like
        the spawned command before its ``exec``).
        """
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        pid, self._pid = self._pid, None
        if pid is not None and os.getpid() == self._owner:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)

    def __enter__(self) -> NetlinkHelper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, name: str, nl: socket.socket, *args: object, **kwargs: object) -> object:
        """Ask the child to work in the netns of ``nl``, which it gets a copy of."""
        self._send(name, args, kwargs, nl.fileno())
        return self._outcome(name)

    def _send(self, name: str, args: tuple, kwargs: dict, fd: int | None = None) -> None:
        request = pickle.dumps((name, args, kwargs))
        try:
            if fd is None:
                self._sock.send(request)
            else:
                socket.send_fds(self._sock, [request], [fd])
        except OSError:  # EPIPE: it is gone
            raise NetconfError(f"netlink helper died before {name}") from None

    def _outcome(self, name: str) -> object:
        try:
            data = self._sock.recv(_MAX_MESSAGE)
        except OSError:  # ECONNRESET: it died with our request unread
            data = b""
        if not data:
            raise NetconfError(f"netlink helper died before {name}")
        ok, value = pickle.loads(data)
        if not ok:
            raise value
        return value


def route_socket() -> socket.socket:
    """A netlink socket of the calling thread's netns: a netlink socket talks to the
    netns it was opened in, whichever process uses it."""
    # SOCK_DGRAM: pyroute2 (asyncio) wants a datagram socket; netlink takes either
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, socket.NETLINK_ROUTE)


def _helper_main(sock: socket.socket) -> None:
    """The child: load pyroute2, then answer one request per message until EOF."""
    import gc

    gc.disable()  # a short life that makes no garbage cycles: collecting only slows the imports
    from pasta_net import privileges, rtnl

    privileges.close_inherited_fds([sock.fileno()])  # ours may include a starter's pipes
    while True:
        data, fds, _flags, _addr = socket.recv_fds(sock, _MAX_MESSAGE, 1)
        if not data:
            return
        name, args, kwargs = pickle.loads(data)
        sock.send(_run(getattr(rtnl, name), *fds, *args, **kwargs))


def _run(function: Callable[..., object], *args: object, **kwargs: object) -> bytes:
    """``function``'s outcome, pickled: ``(True, value)`` or ``(False, NetconfError)``."""
    try:
        outcome: tuple[bool, object] = (True, function(*args, **kwargs))
    except BaseException as exc:  # everything goes back to the parent, which decides
        outcome = (False, exc if isinstance(exc, NetconfError) else NetconfError(str(exc)))
    return pickle.dumps(outcome)


def _disable_dad(ifname: str) -> None:
    """Before the link goes up, so its link-local address skips DAD too: nobody else is
    on this link, and DAD would delay the namespace's first IPv6 packet by two seconds.
    The knob is missing when IPv6 is off (``ipv6.disable=1``), and read-only where
    /proc/sys is (a container nested in another): DAD then runs, which costs time only.
    """
    with (
        contextlib.suppress(OSError),
        open(f"/proc/sys/net/ipv6/conf/{ifname}/accept_dad", "w") as knob,
    ):
        knob.write("0")
