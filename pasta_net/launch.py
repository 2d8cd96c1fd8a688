"""From parsed options to a running engine: attach, configure, daemonise, serve.

Order matters, and each step is where it is for a reason:

1. Read the host's configuration (addresses, routes, resolvers) while we are still in
   our own namespaces.
2. Open the target's namespace fds (:func:`netns.resolve_target`), or spawn the command
   in a new user+net namespace; then join its user namespace if we need to. Joining a
   user namespace needs a single-threaded process, so it precedes every thread.
3. A :class:`~pasta_net.netns.NetnsThread` enters the target netns once and does all
   in-namespace work: create the tap, configure addresses and routes (``--config-net``).
4. Drop privileges (real root becomes ``nobody`` or ``--runas``), bind forwarded ports.
5. Serve. The "ready" signal (parent exits 0, pid file written, spawned command
   released) is given only when all of the above succeeded.

Daemonising forks *first*, before any thread exists (a forked child keeps only the
forking thread): the child does everything above and reports readiness through a pipe;
the parent exits 0 when it reads the ready byte, or 1 when the child dies or reports
an error, whose text the child has already written to the shared stderr.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import ipaddress
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

import attrs
import trio

from pasta_net import netconf, netns, privileges, tun
from pasta_net.core.engine import Engine, EngineConfig
from pasta_net.core.mapping import AddressMap
from pasta_net.core.plan import AddressPlan
from pasta_net.core.udp import IDLE_TIMEOUT as UDP_IDLE_TIMEOUT
from pasta_net.options import IpConfig, Options, UsageError, ephemeral_ports, resolve_runas
from pasta_net.shell.control import Bound, ControlError, Controller, bind_control, serve_control
from pasta_net.shell.follow import Follow, follow_host
from pasta_net.shell.forwarding import Forwarding
from pasta_net.shell.forwards import ForwardTable
from pasta_net.shell.hub import Hub, peek_offset_works
from pasta_net.shell.listeners import ListenError
from pasta_net.shell.pcap import PcapWriter
from pasta_net.shell.run import serve
from pasta_net.shell.stats import DEBUG_INTERVAL, log_stats
from pasta_net.shell.tap import FrameDevice, TapDevice

__all__ = [
    "StartupError",
    "address_plan",
    "engine_config",
    "read_host",
    "run",
    "run_service",
    "serve_frames",
    "setup_logging",
]

log = logging.getLogger("pasta_net")

RESOLV_CONF = "/etc/resolv.conf"
# Test hooks, read from the environment rather than the command line: pasta's options
# must stay exactly pasta's (one more long option changes which abbreviations are
# unique), and tests must neither read the machine's resolv.conf nor wait 180 s for a
# UDP flow to idle out.
RESOLV_CONF_ENV = "PASTA_NET_RESOLV_CONF"
"""Names the file read instead of :data:`RESOLV_CONF`."""
UDP_TIMEOUT_ENV = "PASTA_NET_UDP_TIMEOUT"
"""UDP flow idle timeout in seconds, instead of pasta's 180."""
NO_PEEK_OFFSET_ENV = "PASTA_NET_NO_PEEK_OFFSET"
"""Set (to anything): peek TCP data as on kernels before 6.9, without ``SO_PEEK_OFF``."""
_READY = b"r"
_SIOCGIFHWADDR = 0x8927
_DEFAULT_MAC = bytes.fromhex("9a559a559a55")
"""pasta's own MAC when the host interface has none to copy."""


class StartupError(Exception):
    """Setting up failed; the message is ready for the user (exit status 1)."""


_EXPECTED = (StartupError, netns.NetnsError, netconf.NetconfError, tun.TunError,
             privileges.PrivilegeError, ListenError, ControlError,
             UsageError)  # --runas naming no user, found only when root drops to it


def run(options: Options, prog: str, netlink: netconf.NetlinkHelper | None = None) -> int:
    """Run pasta mode as the options say; the process exit status.

    ``netlink`` is the helper ``cli.main`` started early and asked for the host (a new
    one if None); it is closed once the namespace is configured, or when we fail.
    """
    own_process(options, netlink)
    setup_logging(options, prog)
    if options.fd is not None:  # pasta's pre-opened tap: we create the tap ourselves
        log.error("-F/--fd (a pre-opened tap device) is not supported in pasta mode")
        return 1
    if netlink is None:
        netlink = netconf.NetlinkHelper.start()
        netlink.ask_host(*options.host_query)
    with netlink:
        if options.command or (options.pid is None and options.ns.netns is None):
            return _run_command(options, netlink)
        return run_service(options, lambda ready: _serve(options, _resolve(options), ready,
                                                         netlink), netlink)


# -------------------------------------------------------------------- modes --
Service = Callable[[Callable[[], None]], None]
"""Sets up and serves until done; calls its argument once everything is ready."""


def run_service(options: Options, service: Service, netlink: netconf.NetlinkHelper) -> int:
    """Run ``service`` in the foreground (``-f``) or daemonised; the exit status.

    Shared by pasta and passt mode: "ready" writes the pid file and, for a daemon, lets
    the parent exit 0; a failure before that makes it exit 1. The parent of a daemon
    lets go of ``netlink`` and reaps it (the daemon uses it).
    """
    try:
        pid_file = _open_pid_file(options)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    if options.log.foreground:
        return _guarded(service, lambda: _write_pid_file(pid_file))
    return _daemonize(pid_file, service, netlink)


def _guarded(service: Service, ready: Callable[[], None]) -> int:
    try:
        service(ready)
    except _EXPECTED as exc:
        log.error("%s", exc)
        return 1
    return 0


def _daemonize(pid_file: int | None, service: Service, netlink: netconf.NetlinkHelper) -> int:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_end)
        if pid_file is not None:
            os.close(pid_file)
        with os.fdopen(read_end, "rb") as pipe:
            ready = pipe.read(1) == _READY
        netlink.close()
        if ready:
            return 0
        os.waitpid(pid, 0)
        return 1
    os.close(read_end)
    os.setsid()

    def signal_ready() -> None:
        _write_pid_file(pid_file)
        _detach_stdio()  # first: whoever reads our stdio sees EOF when the parent exits
        os.write(write_end, _READY)
        os.close(write_end)

    os._exit(_guarded(service, signal_ready))


def _run_command(options: Options, netlink: netconf.NetlinkHelper) -> int:
    """``pasta-net [options] [COMMAND]``: a new user+net namespace running COMMAND."""
    argv = list(options.command) or [os.environ.get("SHELL") or "/bin/sh"]
    try:
        pid_file = _open_pid_file(options)
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    try:
        spawned = netns.spawn_in_new_namespace(argv)
    except netns.NetnsError as exc:  # e.g. no unprivileged user namespaces here
        log.error("%s", exc)
        return 1
    status: list[int] = []

    def ready() -> None:
        _write_pid_file(pid_file)
        spawned.release()

    pidfd = os.pidfd_open(spawned.pid)  # readable once the command has exited

    async def command_exits() -> str:
        await trio.lowlevel.wait_readable(pidfd)
        status.append(spawned.wait())
        return f"command exited with status {status[0]}"

    def forward(signum: int) -> None:
        """Through the pidfd: never to another process that got the pid since; a
        command that exited as the signal came is no error."""
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signum)

    try:
        _serve(options, spawned.target, ready, netlink, gone=command_exits, forward=forward)
    except _EXPECTED as exc:
        log.error("%s", exc)
        os.kill(spawned.pid, 9)
        spawned.wait()
        return 1
    finally:
        os.close(pidfd)
    return status[0] if status else 1


# ------------------------------------------------------------------- serving --
def _resolve(options: Options) -> netns.Target:
    if options.pid is not None:  # --userns names another user namespace than the PID's
        return netns.resolve_target(options.pid, None, options.ns.userns,
                                    options.ns.netns_only)
    return netns.resolve_target(None, options.ns.netns, options.ns.userns,
                                options.ns.netns_only)


def _serve(options: Options, target: netns.Target, ready: Callable[[], None],
           netlink: netconf.NetlinkHelper, gone: Callable | None = None,
           forward: Callable[[int], None] | None = None) -> None:
    host = read_host(options, netlink)
    plan = address_plan(options, host)
    netns.join_userns_if_needed(target)
    with netns.NetnsThread(target) as ns_thread:
        ifname = options.ns.ifname or host.ifname or "tap0"
        tap = ns_thread.call(tun.open_tap, ifname)
        ns_thread.call(_configure, options, netlink, tap.name, plan)
        netlink.close()  # its work is done: reap it now, not at exit
        ns_mac = ns_thread.call(_link_mac, tap.name)
        config = engine_config(options, plan, host, ns_mac, tap.offload)
        log.info("%s is up in %s%s", tap.name, target.name,
                 " (offloads on)" if tap.offload else "")
        watch = gone or _watch(options, target)
        follow = _follower(options, ns_thread, tap.name) if options.follow_host else None
        serve_frames(options, config, TapDevice(tap.fd), ready, watch, ns_thread, follow,
                     forward)


def _watch(options: Options, target: netns.Target) -> Callable[[], Awaitable[object]]:
    """What ends the service with its target: the process, or the netns file, unless
    ``--no-netns-quit`` (which, as in pasta, keeps serving a deleted netns file)."""
    if options.ns.no_netns_quit and target.pidfd is None:
        return trio.sleep_forever
    return lambda: netns.wait_gone(target)


def serve_frames(options: Options, config: EngineConfig, device: FrameDevice,
                 ready: Callable[[], None], gone: Callable[[], Awaitable[object]],
                 ns: netns.NetnsThread | None = None, follow: Follow | None = None,
                 forward: Callable[[int], None] | None = None) -> None:
    """Drop privileges, bind the forwards, run the engine on ``device`` until ``gone()``
    returns or a signal arrives: what pasta and passt mode share once their device is open.

    ``ns`` (pasta mode) opens the namespace's sockets for splicing, -T/-U and ``auto``;
    ``follow`` is ``--follow-host`` (pasta mode); ``forward`` sends signals to a command
    we spawned (shell/run.py).
    """
    # created while we still may: real root becomes nobody just below
    pcap = PcapWriter(options.pcap) if options.pcap else None
    control = bind_control(options.control_path, options.api_socket)
    privileges.drop_privileges(resolve_runas(options.runas) if options.runas else None)
    keep = privileges.needed_capabilities(follow_host=follow is not None)
    privileges.lock_thread(keep)
    if ns is not None:
        ns.call(privileges.lock_thread, keep)
    hub = Hub(Engine(config), device, pcap, peek_offset=_peek_offset(),
              outbound={4: _outbound(options.ip4), 6: _outbound(options.ip6)})
    # Start-up is over (cli.main turned the collector off for it): what it made lives as
    # long as we do, so later collections need not walk it again and again.
    gc.freeze()
    gc.enable()
    try:
        run_trio(serve, hub, gone, ready, _forwarder(options, control, ns, follow), forward)
    finally:
        if pcap is not None:
            pcap.close()


def run_trio(main: Callable[..., Awaitable[object]], *args: object) -> None:
    """``trio.run``, raising the one error a nursery wrapped as that error itself.

    trio ≥ 0.25 wraps whatever fails in a nursery in an ``ExceptionGroup`` (0.22 did
    not): a port already taken must still read "pasta-net: Failed to bind port ...",
    not a traceback. Strict groups are asked for on every version, so this is the one
    behaviour whatever trio is installed; several errors at once stay a group.
    """
    try:
        trio.run(main, *args, strict_exception_groups=True)
    except BaseExceptionGroup as group:
        errors = _leaves(group)
        if len(errors) == 1:
            raise errors[0] from None
        raise


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    return [leaf for exc in group.exceptions
            for leaf in (_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])]


def _forwarder(options: Options, control: Bound, ns: netns.NetnsThread | None,
               follow: Follow | None = None) -> Callable:
    """The ``setup`` step of :func:`serve`: bind the forwards and the control sockets
    before we say "ready", then keep ``auto`` in step (and close them all) in a task of
    the serving nursery, and follow the host if asked."""

    async def bind(hub: Hub, nursery: trio.Nursery) -> None:
        forwarding = Forwarding(hub, ns, options, ephemeral_ports())
        forwards = ForwardTable()
        forwarding.bind_command_line(forwards)
        nursery.start_soon(forwarding.run)
        controller = Controller(hub, forwards, forwarding.ephemeral, auto=ns is not None)
        serve_control(control, controller, nursery)
        stats = options.log.stats
        if stats is not None:  # at least a second apart: 0 would spin
            nursery.start_soon(log_stats, controller, max(stats, 1), logging.INFO)
        elif options.log.debug:
            nursery.start_soon(log_stats, controller, DEBUG_INTERVAL, logging.DEBUG)
        if follow is not None:
            await nursery.start(follow_host, follow, hub.engine)

    return bind


def _follower(options: Options, ns_thread: netns.NetnsThread, ifname: str) -> Follow:
    """``--follow-host``: read the host again, plan for it, re-address ``ifname``."""
    def replan(host: netconf.HostConfig, old: AddressPlan) -> tuple[AddressPlan, AddressMap]:
        plan = attrs.evolve(address_plan(options, host), our_mac=old.our_mac)
        return plan, address_map(options, plan, host)

    def reconfigure(old: netconf.Addressing, new: netconf.Addressing) -> None:
        # Only the socket is made in the netns thread: the one-off helper's 0.2 s of
        # pyroute2 runs here, in follow's worker thread, not in the thread that
        # splicing and auto-forward scans wait for.
        with ns_thread.call(netconf.route_socket) as nl:
            netconf.readdress_namespace(nl, ifname, old, new)

    return Follow(lambda: netconf.read_host(*options.host_query), replan,
                  reconfigure if options.ns.config_net else None)


def read_host(options: Options, netlink: netconf.NetlinkHelper) -> netconf.HostConfig:
    """The host's interface, addresses and routes, which the guest's plan copies; with
    no usable one, :data:`netconf.LOCAL_MODE` (as pasta since 2024: an offline host
    must not keep a container from starting). Any other failure is an error: an online
    host put in local mode by a fault would be worse than a message."""
    try:
        return netconf.host_config(netlink)
    except netconf.NoDefaultRoute:
        log.info("No external interface as template, switch to local mode")
        return netconf.LOCAL_MODE
    except netconf.NetconfError as exc:
        raise StartupError(f"External interface not usable: {exc}") from None


def _configure(options: Options, netlink: netconf.NetlinkHelper, ifname: str,
               plan: AddressPlan) -> None:
    """In the target netns: MAC, MTU, link up; addresses and routes with --config-net."""
    mtu = options.mtu or 65520
    if options.ns.config_net:
        netlink.configure(
            ifname, mac=options.ns.mac_addr, mtu=mtu,
            addr4=plan.addr4, prefix4=plan.prefix4, gw4=plan.gw4,
            addr6=plan.addr6, prefix6=plan.prefix6, gw6=plan.gw6)
    else:
        netlink.configure(ifname, mac=options.ns.mac_addr, mtu=mtu)


def _link_mac(ifname: str) -> bytes:
    """The tap's MAC, asked of the current netns (/sys may show another one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock.fileno(), _SIOCGIFHWADDR, struct.pack("256s", ifname.encode()))
    return ifreq[18:24]


# ------------------------------------------------------------ address plans --
def _packed(addr: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bytes | None:
    return None if addr is None else addr.packed


def _resolvers() -> tuple[tuple[bytes, ...], tuple[str, ...]]:
    try:
        with open(os.environ.get(RESOLV_CONF_ENV) or RESOLV_CONF) as f:
            servers, search = netconf.parse_resolv_conf(f.read())
    except OSError:
        return (), ()
    return tuple(s.packed for s in servers), search


def address_plan(options: Options, host: netconf.HostConfig) -> AddressPlan:
    """The namespace's addresses: the options where given, else the host's own."""
    want4, want6 = not options.ipv6_only, not options.ipv4_only
    addr4, prefix4, gw4 = _family(options.ip4, host.addr4, host.prefix4, host.gw4, 24)
    addr6, prefix6, gw6 = _family(options.ip6, host.addr6, host.prefix6, host.gw6, 64)
    resolvers, host_search = _resolvers()
    dns = options.dns
    if dns.disabled:
        servers: tuple[bytes, ...] = ()
    elif dns.servers:
        servers = tuple(s.packed for s in dns.servers)
    else:
        forwards = tuple(a for a in (_packed(options.ip4.dns_forward),
                                     _packed(options.ip6.dns_forward)) if a)
        loopback = _host_loopback(options, gw4 if want4 else None, gw6 if want6 else None)
        servers = forwards or _reachable_resolvers(resolvers, loopback)
    search = () if dns.search_disabled else (dns.search or host_search)
    if not dns.dhcp_dns:
        servers = ()
    if not dns.dhcp_search:
        search = ()
    return AddressPlan(
        our_mac=options.mac_addr or host.mac or _DEFAULT_MAC,
        addr4=addr4 if want4 else None, prefix4=prefix4, gw4=gw4 if want4 else None,
        addr6=addr6 if want6 else None, prefix6=prefix6, gw6=gw6 if want6 else None,
        mtu=options.mtu,
        dns4=tuple(s for s in servers if len(s) == 4),
        dns6=tuple(s for s in servers if len(s) == 16),
        search=search, hostname=options.hostname, fqdn=options.fqdn,
    )


def _family(ip: IpConfig, addr: bytes | None, prefix: int | None, gw: bytes | None,
            default_prefix: int) -> tuple[bytes | None, int, bytes | None]:
    chosen = _packed(ip.address) or addr
    length = ip.prefix_len or (prefix if chosen == addr else None) or default_prefix
    return chosen, length, _packed(ip.gateway) or gw


def engine_config(options: Options, plan: AddressPlan, host: netconf.HostConfig,
                  ns_mac: bytes, offload: bool) -> EngineConfig:
    return EngineConfig(
        plan=plan, ns_mac=ns_mac, offload=offload,
        tcp=not options.no_tcp, udp=not options.no_udp, icmp=not options.no_icmp,
        dhcp=not options.no_dhcp, dhcpv6=not options.no_dhcpv6,
        ndp=not options.no_ndp, ra=not options.no_ra,
        mapping=address_map(options, plan, host), udp_timeout=_udp_timeout(),
    )


def _outbound(ip: IpConfig) -> tuple[str | None, str | None]:
    """-o and --outbound-if4/6 of one family, as the hub takes them."""
    return (str(ip.outbound) if ip.outbound is not None else None), ip.outbound_if


def _peek_offset() -> bool:
    """Whether the hub may use ``SO_PEEK_OFF`` on TCP sockets (shell/hub.py)."""
    if os.environ.get(NO_PEEK_OFFSET_ENV) or not peek_offset_works():
        log.debug("TCP sockets without SO_PEEK_OFF (Linux < 6.9): peeking from the head")
        return False
    return True


def _udp_timeout() -> float:
    """pasta's UDP flow timeout, unless a test shortened it (see UDP_TIMEOUT_ENV)."""
    text = os.environ.get(UDP_TIMEOUT_ENV)
    if not text:
        return UDP_IDLE_TIMEOUT
    try:
        timeout = float(text)
    except ValueError:
        timeout = -1.0
    if not 0 < timeout < float("inf"):
        raise StartupError(f"Invalid {UDP_TIMEOUT_ENV}: {text}")
    return timeout


def _host_loopback(options: Options, gw4: bytes | None, gw6: bytes | None
                   ) -> tuple[bytes, ...]:
    """The --map-host-loopback addresses: as given, else the gateways (unless --no-map-gw)."""
    explicit = tuple(a for a in (_packed(options.ip4.map_host_loopback),
                                 _packed(options.ip6.map_host_loopback)) if a)
    if explicit or options.no_map_gw:
        return explicit
    return tuple(a for a in (gw4, gw6) if a)


def _is_loopback(addr: bytes) -> bool:
    return ipaddress.ip_address(addr).is_loopback


def _reachable_resolvers(resolvers: tuple[bytes, ...], loopback: tuple[bytes, ...]
                         ) -> tuple[bytes, ...]:
    """The host's resolvers as the namespace reaches them (pasta's rule): one on the
    host's loopback (systemd-resolved's 127.0.0.53) at the --map-host-loopback address of
    its family, or not at all."""
    reachable: list[bytes] = []
    for resolver in resolvers:
        if _is_loopback(resolver):
            resolver = next((a for a in loopback if len(a) == len(resolver)), b"")
        if resolver and resolver not in reachable:
            reachable.append(resolver)
    return tuple(reachable)


def _dns_match(resolvers: tuple[bytes, ...], loopback: tuple[bytes, ...],
               forward: tuple[bytes, ...]) -> tuple[bytes, ...]:
    """pasta's implicit --dns-forward: when a resolver sits on the host's loopback, DNS to
    the --map-host-loopback address goes to the host's resolver, not to whatever listens
    on the host's 127.0.0.1:53; only in families without an explicit --dns-forward."""
    return tuple(a for a in loopback
                 if not any(len(f) == len(a) for f in forward)
                 and any(len(r) == len(a) and _is_loopback(r) for r in resolvers))


def address_map(options: Options, plan: AddressPlan, host: netconf.HostConfig) -> AddressMap:
    """Which namespace-side addresses mean the host itself (see core/mapping.py)."""
    loopback = _host_loopback(options, plan.gw4, plan.gw6)
    guest = tuple(a for a in (_packed(options.ip4.map_guest_addr),
                              _packed(options.ip6.map_guest_addr)) if a)
    forward = tuple(a for a in (_packed(options.ip4.dns_forward),
                                _packed(options.ip6.dns_forward)) if a)
    resolvers, _search = _resolvers()
    forward += _dns_match(resolvers, loopback, forward)
    dns4 = _packed(options.ip4.dns_host) or next((r for r in resolvers if len(r) == 4), None)
    dns6 = _packed(options.ip6.dns_host) or next((r for r in resolvers if len(r) == 16), None)
    own4, own6 = (None, None) if host.local else (host.addr4, host.addr6)
    return AddressMap(host_loopback=loopback, guest_addr=guest, host_addr4=own4,
                      host_addr6=own6, dns_forward=forward, dns_host4=dns4,
                      dns_host6=dns6)


# ------------------------------------------------------------------ process --
def own_process(options: Options, netlink: netconf.NetlinkHelper | None) -> None:
    """First thing in either mode, while we are one thread: close what our starter leaked
    to us (all fds above stderr but ``--fd`` and the netlink helper's socket), take the
    whole fd limit we are allowed, and keep capabilities over a switch away from root, to
    drop them one by one later (DESIGN.md §6)."""
    keep = [] if options.fd is None else [options.fd]
    privileges.close_inherited_fds(keep + ([netlink.fileno()] if netlink else []))
    privileges.raise_fd_limit()
    privileges.keep_capabilities_across_uid_change()


def _open_pid_file(options: Options) -> int | None:
    """Open (create) the ``-P`` file now, while we still may: real root becomes nobody
    before "ready", when the pid is known and written (pasta opens it early too)."""
    if not options.pid_file:
        return None
    try:
        return os.open(options.pid_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                       0o644)
    except OSError as exc:
        raise StartupError(f"Couldn't open PID file {options.pid_file}: {exc.strerror}"
                           ) from None


def _write_pid_file(fd: int | None) -> None:
    if fd is not None:
        os.write(fd, f"{os.getpid()}\n".encode())
        os.close(fd)


def _detach_stdio() -> None:
    """The daemon must not hold its starter's pipes open (podman waits for EOF on them)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler) and not isinstance(
                handler, logging.FileHandler):
            logging.getLogger().removeHandler(handler)


def setup_logging(options: Options, prog: str) -> None:
    opts = options.log
    level = logging.DEBUG if opts.debug or opts.trace else (
        logging.WARNING if opts.quiet else logging.INFO)
    root = logging.getLogger()
    root.setLevel(level)
    formatter = logging.Formatter(f"{os.path.basename(prog)}: %(message)s")
    if opts.log_file:
        handler: logging.Handler = CappedLog(opts.log_file, opts.log_size)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root.addHandler(handler)
    else:
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(formatter)
        root.addHandler(stream)


class CappedLog(logging.StreamHandler):
    """``-l FILE`` with ``--log-size``: a file opened once, before privileges go, and
    emptied when the next record would take it past the size. RotatingFileHandler with
    no backups reopens the file at each rollover, which after the drop to nobody fails
    on root's file (logging then stops), and it never shrinks the file either."""

    def __init__(self, path: str, max_bytes: int) -> None:
        super().__init__(open(path, "a", encoding="utf-8"))  # noqa: SIM115 (closed in close)
        self.max_bytes = max_bytes

    def emit(self, record: logging.LogRecord) -> None:
        stream = self.stream
        if self.max_bytes and stream.tell() + len(self.format(record)) + 1 > self.max_bytes:
            stream.seek(0)
            stream.truncate()
        super().emit(record)

    def close(self) -> None:
        self.stream.close()
        super().close()

