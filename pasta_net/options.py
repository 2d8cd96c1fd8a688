"""pasta's command line, parsed exactly the way pasta parses it, into frozen records.

podman, RootlessKit and shell scripts run ``pasta`` with arguments written for upstream
pasta, and podman even reacts to the *text* of pasta's errors (it retries without
``--map-guest-addr`` on ``pasta: unrecognized option '--map-guest-addr'``). So this module
copies glibc's ``getopt_long`` with pasta's option string ``+dqfel:hs:c:F:I:...``:

- long options may be abbreviated to any prefix that is unique, or shared only by aliases
  of one option; ``--opt=value`` and ``--opt value`` both work;
- short options cluster (``-fq``) and take their value attached or separate
  (``-m1500``, ``-m 1500``);
- ``+`` ordering: the first non-option argument, or ``--``, ends the options; what follows
  is a PID (a single all-digit argument) or the command to spawn;
- errors are glibc's words (``unrecognized option '--x'``, ``option requires an argument
  -- 't'``), after ``prog:`` and followed by the usage text, as pasta prints them
  (:meth:`UsageError.render`).

Values are checked in argv order with upstream ``conf.c``'s rules and messages, then the
cross-checks run, then the port specs (pasta parses -t/-u/-T/-U in a second pass, once
the addresses are known). -h and --version act at once, like pasta, which exits there.

What is not parsed here: names resolved through the system (``--runas`` user names go
through :func:`resolve_runas`, ``-i`` names through the kernel) and the default port specs
(-t/-u/-T/-U are ``auto`` in pasta mode when not given: ``None`` here says "not given").
"""

from __future__ import annotations

import enum
import grp
import ipaddress
import operator
import os
import pwd
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TypeAlias

import attrs

from pasta_net import __version__
from pasta_net.core.dnsname import is_domain_name
from pasta_net.core.portspec import (
    EPHEMERAL_PORTS,
    IPAddress,
    PortMode,
    PortRange,
    PortSpec,
    PortSpecError,
    parse_ephemeral_range,
    parse_port_spec,
)

__all__ = [
    "Action",
    "Dns",
    "IpConfig",
    "Logging",
    "Mode",
    "Namespace",
    "Options",
    "PortOptions",
    "RunAs",
    "UsageError",
    "ephemeral_ports",
    "help_text",
    "parse_args",
    "resolve_runas",
    "version_text",
]

DEFAULT_MTU = 65520
"""802.3's maximum frame minus its header, rounded down to whole 32-bit words."""
MAX_MTU = 65520
LOG_SIZE_DEFAULT = 1024 * 1024
LOG_SIZE_MIN = 5 * 8192
"""pasta's ``5 * MAX(BUFSIZ, PAGE_SIZE)``: room for a few lines after each cut."""
PATH_MAX = 4096
UNIX_PATH_MAX = 108
IFNAMSIZ = 16
MAX_DNAME = 253
INT_MAX = 2**31 - 1
NETNS_RUN_DIR = "/run/netns"


class Mode(enum.Enum):
    PASTA = "pasta"
    """Connect a network namespace through a tap device."""
    PASST = "passt"
    """Serve a VM (qemu, libvirt) over a UNIX stream socket."""


class Action(enum.Enum):
    """What the command line asks the program to do."""

    RUN = "run"
    HELP = "help"
    VERSION = "version"


class UsageError(Exception):
    """A command line pasta would refuse; the process should exit with status 1.

    ``usage`` is set for getopt-level errors (unknown option, missing argument), where
    pasta prints ``prog: message`` and then its usage text; value errors are a bare line.
    """

    def __init__(self, message: str, *, prog: str | None = None, usage: str | None = None) -> None:
        self.message = message
        self.prog = prog
        self.usage = usage
        super().__init__(f"{prog}: {message}" if prog else message)

    def render(self) -> str:
        """Everything to write to stderr, as pasta writes it."""
        return f"{self}\n{self.usage or ''}"


@attrs.frozen(kw_only=True)
class Logging:
    debug: bool = False
    trace: bool = False
    quiet: bool = False
    foreground: bool = False
    stderr: bool = False
    """-e: log to stderr too (deprecated upstream, where it has no effect)."""
    log_file: str | None = None
    log_size: int = LOG_SIZE_DEFAULT
    stats: int | None = None
    """--stats: minimum seconds between event statistics lines."""


@attrs.frozen(kw_only=True)
class RunAs:
    """--runas as given: numbers where numeric, names otherwise (see resolve_runas)."""

    user: int | str
    group: int | str | None = None


@attrs.frozen(kw_only=True)
class IpConfig:
    """The options of one address family; None everywhere means "derive from the host"."""

    address: IPAddress | None = None
    prefix_len: int | None = None
    gateway: IPAddress | None = None
    outbound: IPAddress | None = None
    """-o: source address for outbound sockets."""
    outbound_if: str | None = None
    dns_forward: IPAddress | None = None
    """--dns-forward: queries sent here go to the host's resolver."""
    dns_host: IPAddress | None = None
    map_host_loopback: IPAddress | None = None
    """None: the gateway address, unless --no-map-gw."""
    map_guest_addr: IPAddress | None = None


@attrs.frozen(kw_only=True)
class Dns:
    servers: tuple[IPAddress, ...] = ()
    """-D addresses, both families, in order."""
    disabled: bool = False
    """-D none: advertise no resolver at all."""
    search: tuple[str, ...] = ()
    search_disabled: bool = False
    dhcp_dns: bool = False
    """Advertise resolvers through DHCP/DHCPv6/NDP (off in pasta, on in passt)."""
    dhcp_search: bool = False


@attrs.frozen(kw_only=True)
class Namespace:
    """pasta's target namespaces and what to do inside them."""

    netns: str | None = None
    """Path of the network namespace (--netns, or /proc/PID/ns/net for a PID)."""
    userns: str | None = None
    netns_only: bool = False
    """Do not join the user namespace."""
    no_netns_quit: bool = False
    config_net: bool = False
    ifname: str | None = None
    """-I: the tap's name (default: the host's template interface name)."""
    mac_addr: bytes | None = None
    """--ns-mac-addr."""
    no_copy_routes: bool = False
    no_copy_addrs: bool = False


@attrs.frozen(kw_only=True)
class PortOptions:
    """Parsed -t/-u/-T/-U, in argv order; None when the option was never given (pasta then
    uses ``auto``; podman always passes ``none`` explicitly)."""

    tcp: tuple[PortSpec, ...] | None = None
    udp: tuple[PortSpec, ...] | None = None
    tcp_ns: tuple[PortSpec, ...] | None = None
    udp_ns: tuple[PortSpec, ...] | None = None


@attrs.frozen(kw_only=True)
class Options:
    mode: Mode = Mode.PASTA
    action: Action = Action.RUN
    log: Logging = Logging()
    runas: RunAs | None = None
    fd: int | None = None
    """-F: a pre-opened connected socket (passt) or tap (pasta)."""
    pcap: str | None = None
    pid_file: str | None = None
    socket_path: str | None = None
    one_off: bool = False
    control_path: str | None = None
    """-c/--conf-path (alias --control): the run-time forwarding control socket."""
    api_socket: str | None = None
    follow_host: bool = False
    mtu: int = DEFAULT_MTU
    mac_addr: bytes | None = None
    """-M: our MAC address as the namespace sees it."""
    interface: str | None = None
    ipv4_only: bool = False
    ipv6_only: bool = False
    ip4: IpConfig = IpConfig()
    ip6: IpConfig = IpConfig()
    dns: Dns = Dns()
    hostname: str | None = None
    fqdn: str | None = None
    no_tcp: bool = False
    no_udp: bool = False
    no_icmp: bool = False
    no_dhcp: bool = False
    no_ndp: bool = False
    no_dhcpv6: bool = False
    no_ra: bool = False
    no_map_gw: bool = False
    ports: PortOptions = PortOptions()
    freebind: bool = False
    ns: Namespace = Namespace()
    host_lo_to_ns_lo: bool = False
    splice_only: bool = False
    no_splice: bool = False
    chroot_fallback: bool = False
    pid: int | None = None
    """The PID whose namespaces to join (a lone all-digit argument)."""
    command: tuple[str, ...] = ()
    """The command to spawn in a new namespace; empty means the user's shell."""

    @property
    def host_query(self) -> tuple[str | None, bool, bool]:
        """What to read of the host: ``(interface, want IPv4?, want IPv6?)``."""
        return self.interface, not self.ipv6_only, not self.ipv4_only


# --- getopt ----------------------------------------------------------------------------


@attrs.frozen
class _Long:
    name: str
    has_arg: bool
    key: str = ""
    """The option this name stands for; aliases share it (and are never ambiguous)."""

    def __attrs_post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", self.name)


def _flags(*names: str) -> tuple[_Long, ...]:
    return tuple(_Long(name, False) for name in names)


# Upstream conf.c's table order, which glibc follows when it lists ambiguous matches,
# then pasta-net's own options.
_LONG_OPTIONS: tuple[_Long, ...] = (
    *_flags("debug", "quiet", "foreground", "stderr"),
    _Long("log-file", True),
    _Long("help", False),
    _Long("socket", True),
    _Long("fd", True),
    _Long("ns-ifname", True),
    _Long("pcap", True),
    _Long("pid", True),
    _Long("mtu", True),
    _Long("address", True),
    _Long("netmask", True),
    _Long("mac-addr", True),
    _Long("gateway", True),
    _Long("interface", True),
    _Long("outbound", True),
    _Long("dns", True),
    _Long("search", True),
    _Long("hostname", True),
    *_flags("no-tcp", "no-udp", "no-icmp", "no-dhcp", "no-dhcpv6", "no-ndp", "no-ra"),
    *_flags("no-splice", "splice-only", "freebind", "no-map-gw"),
    *_flags("ipv4-only", "ipv6-only", "one-off"),
    _Long("tcp-ports", True),
    _Long("udp-ports", True),
    _Long("tcp-ns", True),
    _Long("udp-ns", True),
    _Long("userns", True),
    _Long("netns", True),
    _Long("ns-mac-addr", True),
    *_flags("dhcp-dns", "no-dhcp-dns", "dhcp-search", "no-dhcp-search"),
    _Long("dns-forward", True),
    *_flags("no-netns-quit", "trace"),
    _Long("runas", True),
    _Long("log-size", True),
    _Long("version", False),
    _Long("outbound-if4", True),
    _Long("outbound-if6", True),
    *_flags("config-net", "no-copy-routes", "no-copy-addrs", "netns-only"),
    _Long("map-host-loopback", True),
    _Long("map-guest-addr", True),
    _Long("host-lo-to-ns-lo", False),
    _Long("dns-host", True),
    _Long("socket-path", True, "socket"),
    _Long("fqdn", True),
    _Long("stats", True),
    _Long("conf-path", True),
    _Long("chroot-fallback", False),
    # pasta-net: podman's pseudo-option, accepted when passed straight through
    _Long("map-gw", False),
    _Long("control", True, "conf-path"),
    _Long("api-socket", True),
    _Long("follow-host", False),
)

# pasta's optstring "+dqfel:hs:c:F:I:p:P:m:a:n:M:g:i:o:D:S:H:461t:u:T:U:", by long name
_SHORT_OPTIONS: dict[str, str] = {
    "d": "debug", "q": "quiet", "f": "foreground", "e": "stderr", "l": "log-file",
    "h": "help", "s": "socket", "c": "conf-path", "F": "fd", "I": "ns-ifname",
    "p": "pcap", "P": "pid", "m": "mtu", "a": "address", "n": "netmask", "M": "mac-addr",
    "g": "gateway", "i": "interface", "o": "outbound", "D": "dns", "S": "search",
    "H": "hostname", "4": "ipv4-only", "6": "ipv6-only", "1": "one-off",
    "t": "tcp-ports", "u": "udp-ports", "T": "tcp-ns", "U": "udp-ns",
}  # fmt: skip

_TAKES_ARG = {opt.key: opt.has_arg for opt in _LONG_OPTIONS}


class _GetOpt:
    """glibc ``getopt_long`` with a "+" optstring: yields (option key, argument) pairs in
    order, and afterwards holds the non-option arguments in ``rest``."""

    def __init__(self, argv: Sequence[str], prog: str, usage: str) -> None:
        self.argv = list(argv)
        self.prog = prog
        self.usage = usage
        self.next = 0
        """Index of the next argv element to look at (getopt's ``optind``)."""

    @property
    def rest(self) -> list[str]:
        return self.argv[self.next :]

    def error(self, message: str) -> UsageError:
        return UsageError(message, prog=self.prog, usage=self.usage)

    def __iter__(self) -> Iterator[tuple[str, str | None]]:
        while self.next < len(self.argv):
            arg = self.argv[self.next]
            if arg == "--":
                self.next += 1
                return
            if not arg.startswith("-") or arg == "-":
                return
            self.next += 1
            if arg.startswith("--"):
                yield self._long(arg[2:])
            else:
                yield from self._short(arg[1:])

    def _value(self) -> str | None:
        """The next argv element as an option's argument, whatever it looks like."""
        if self.next == len(self.argv):
            return None
        self.next += 1
        return self.argv[self.next - 1]

    def _long(self, text: str) -> tuple[str, str | None]:
        name, eq, value = text.partition("=")
        opt = self._match(name, text)
        if not opt.has_arg:
            if eq:
                raise self.error(f"option '--{opt.name}' doesn't allow an argument")
            return opt.key, None
        found = value if eq else self._value()
        if found is None:
            raise self.error(f"option '--{opt.name}' requires an argument")
        return opt.key, found

    def _match(self, name: str, text: str) -> _Long:
        """Exact name, else the unique prefix match (glibc: matches that only differ from
        the first one found are what makes a prefix ambiguous)."""
        for opt in _LONG_OPTIONS:
            if opt.name == name:
                return opt
        found = [opt for opt in _LONG_OPTIONS if opt.name.startswith(name)]
        if not found:
            raise self.error(f"unrecognized option '--{text}'")
        first = found[0]
        differing = [o for o in found if (o.has_arg, o.key) != (first.has_arg, first.key)]
        if differing:
            names = " ".join(f"'--{o.name}'" for o in (first, *differing))
            raise self.error(f"option '--{text}' is ambiguous; possibilities: {names}")
        return first

    def _short(self, cluster: str) -> Iterator[tuple[str, str | None]]:
        for pos, letter in enumerate(cluster):
            key = _SHORT_OPTIONS.get(letter)
            if key is None:
                raise self.error(f"invalid option -- '{letter}'")
            if not _TAKES_ARG[key]:
                yield key, None
                continue
            found = cluster[pos + 1 :] or self._value()
            if found is None:
                raise self.error(f"option requires an argument -- '{letter}'")
            yield key, found
            return


# --- values ----------------------------------------------------------------------------

_C_NUMBERS = (
    (re.compile(r"[1-9][0-9]*"), 10),
    (re.compile(r"0[xX][0-9a-fA-F]+"), 16),
    (re.compile(r"0[0-7]*"), 8),
)
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")


def _unsigned(text: str) -> int | None:
    """``strtoul(text, &end, 0)`` that must consume everything: decimal, 0x hex, 0 octal."""
    for pattern, base in _C_NUMBERS:
        if pattern.fullmatch(text):
            return int(text, base)
    return None


def _digits(text: str) -> bool:
    """Only ASCII digits (``str.isdigit`` also takes "²" and other scripts' digits)."""
    return text.isascii() and text.isdigit()


def _ip(text: str) -> IPAddress | None:
    """What ``inet_pton`` accepts: no IPv6 zone, no leading zeros in IPv4."""
    if "%" in text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _is_v4compat(addr: IPAddress) -> bool:
    return addr.version == 6 and int(addr) >> 32 == 0 and int(addr) > 1


def _is_broadcast(addr: IPAddress) -> bool:
    return addr == ipaddress.IPv4Address("255.255.255.255")


def _checked_ip(text: str, message: str, *rejects: Callable[[IPAddress], bool]) -> IPAddress:
    addr = _ip(text)
    if addr is None or any(reject(addr) for reject in rejects):
        raise UsageError(f"{message}: {text}")
    return addr


_unspecified = operator.attrgetter("is_unspecified")
_loopback = operator.attrgetter("is_loopback")
_multicast = operator.attrgetter("is_multicast")


def _mac(text: str) -> bytes:
    if not _MAC.fullmatch(text):
        raise UsageError(f"Invalid MAC address: {text}")
    return bytes.fromhex(text.replace(":", ""))


def _ifname(text: str) -> str:
    if not text or len(text) >= IFNAMSIZ:
        raise UsageError(f"Invalid interface name: {text}")
    return text


def _bounded(text: str, limit: int, message: str) -> str:
    if not text or len(text) >= limit:
        raise UsageError(f"{message}: {text}")
    return text


def _runas(text: str) -> RunAs:
    user, sep, group = text.partition(":")
    if not user or (sep and not group):
        raise UsageError(f"Invalid --runas option: {text}")

    def id_or_name(part: str) -> int | str:
        number = _unsigned(part)
        return part if number is None else number

    return RunAs(user=id_or_name(user), group=id_or_name(group) if sep else None)


def resolve_runas(runas: RunAs) -> tuple[int, int]:
    """UID and GID for --runas, looking names up as pasta does (getpwnam/getgrnam).

    A user name given without a group brings its primary group; a name that resolves to
    root is refused, since dropping to root is no drop at all.
    """
    text = f"{runas.user}" + ("" if runas.group is None else f":{runas.group}")
    try:
        if isinstance(runas.user, int):
            uid = gid = runas.user
        else:
            entry = pwd.getpwnam(runas.user)
            uid, gid = entry.pw_uid, entry.pw_gid
            if uid == 0:
                raise KeyError(runas.user)
        if isinstance(runas.group, str):
            gid = grp.getgrnam(runas.group).gr_gid
        elif runas.group is not None:
            gid = runas.group
    except KeyError:
        raise UsageError(f"Invalid --runas option: {text}") from None
    return uid, gid


# --- the parse -------------------------------------------------------------------------

_PORT_FIELDS = {"t": "tcp", "u": "udp", "T": "tcp_ns", "U": "udp_ns"}
_PORT_KEYS = {"tcp-ports": "t", "udp-ports": "u", "tcp-ns": "T", "udp-ns": "U"}


def _only(mode: Mode, names: dict[str, str]) -> dict[str, tuple[Mode, str]]:
    return {key: (mode, f"{name} is for {mode.value} mode only") for key, name in names.items()}


# Options pasta's getopt accepts in both modes, then refuses in the wrong one.
_MODE_ONLY: dict[str, tuple[Mode, str]] = {
    **_only(Mode.PASTA, {
        "userns": "--userns", "netns": "--netns", "ns-mac-addr": "--ns-mac-addr",
        "dhcp-dns": "--dhcp-dns", "dhcp-search": "--dhcp-search",
        "no-netns-quit": "--no-netns-quit", "config-net": "--config-net",
        "no-copy-routes": "--no-copy-routes", "no-copy-addrs": "--no-copy-addrs",
        "netns-only": "--netns-only", "host-lo-to-ns-lo": "--host-lo-to-ns-lo",
        "ns-ifname": "-I", "tcp-ns": "-T", "udp-ns": "-U",
    }),
    **_only(Mode.PASST, {
        "no-dhcp-dns": "--no-dhcp-dns", "no-dhcp-search": "--no-dhcp-search",
        "one-off": "--one-off",
    }),
    "socket": (Mode.PASST, "-s is for passt / vhost-user mode only"),
}  # fmt: skip


@attrs.define
class _State:
    """The options so far, plus what pasta remembers between options."""

    opts: Options
    ephemeral: PortRange
    port_args: list[tuple[str, str]] = attrs.Factory(list)
    """(-t/-u/-T/-U letter, spec) in argv order, parsed after everything else."""
    netmask: int | None = None
    """-n, for a later -a without /PREFIX, and pasta's redundancy check."""
    address_had_prefix: bool = False
    """Whether the last -a carried /PREFIX."""

    def update(self, part: str = "", **changes: object) -> None:
        """Change fields of Options itself, or of its record ``part`` ("log", "ip4"...)."""
        if part:
            changes = {part: attrs.evolve(getattr(self.opts, part), **changes)}
        self.opts = attrs.evolve(self.opts, **changes)

    def update_family(self, addr: IPAddress, field: str) -> None:
        """Set ``field`` of ip4 or ip6, whichever family ``addr`` belongs to."""
        self.update(f"ip{addr.version}", **{field: addr})


Handler: TypeAlias = Callable[[_State, str], None]


def _set(part: str, **changes: object) -> Handler:
    """A switch: fixed changes, whatever the argument."""

    def handler(st: _State, _arg: str) -> None:
        st.update(part, **changes)

    return handler


def _store(part: str, field: str, convert: Callable[[str], object] = str) -> Handler:
    """An option whose checked value goes into one field."""

    def handler(st: _State, arg: str) -> None:
        st.update(part, **{field: convert(arg)})

    return handler


def _on_quiet(st: _State, _arg: str) -> None:
    st.update("log", quiet=True, debug=False, trace=False)


def _on_log_size(st: _State, arg: str) -> None:
    size = _unsigned(arg)
    if size is None or size < LOG_SIZE_MIN:
        raise UsageError(f"Invalid --log-size: {arg}")
    st.update("log", log_size=size)


def _on_stats(st: _State, arg: str) -> None:
    if not st.opts.log.foreground:
        raise UsageError("Can't display statistics if not running in foreground")
    delay = _unsigned(arg)
    if delay is None:
        raise UsageError(f"Invalid --stats: {arg}")
    st.update("log", stats=delay)


def _on_fd(st: _State, arg: str) -> None:
    fd = _unsigned(arg)
    if fd is None or fd > INT_MAX:
        raise UsageError(f"Invalid --fd: {arg}")
    st.update(fd=fd, one_off=True, socket_path=None)


def _on_mtu(st: _State, arg: str) -> None:
    mtu = _unsigned(arg)
    if mtu is None:
        raise UsageError(f"Invalid MTU: {arg}")
    if mtu > MAX_MTU:
        raise UsageError(f"MTU {mtu} too large (max {MAX_MTU})")
    st.update(mtu=mtu)


def _on_address(st: _State, arg: str) -> None:
    """-a ADDR[/PREFIX]: one address per family, the last one wins."""
    text, slash, prefix_text = arg.partition("/")
    addr = _ip(text)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    if addr is None or (slash and not _digits(prefix_text)):
        raise UsageError(f"Invalid guest address: {arg}")
    prefix = st.netmask if addr.version == 4 else None
    if slash:
        if st.netmask is not None:
            raise UsageError("Redundant prefix length specification")
        prefix = int(prefix_text)
        if prefix > addr.max_prefixlen:
            raise UsageError(f"Invalid prefix length: {arg}")
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or _is_broadcast(addr):
        raise UsageError(f"Invalid guest address: {arg}")
    st.address_had_prefix = bool(slash)
    st.update(f"ip{addr.version}", address=addr, prefix_len=prefix)


def _on_netmask(st: _State, arg: str) -> None:
    """-n MASK: dotted quad with contiguous bits, or a prefix length."""
    if st.address_had_prefix:
        raise UsageError("Redundant prefix length specification")
    mask = _ip(arg)
    if isinstance(mask, ipaddress.IPv4Address):
        bits = int(mask)
        length = bin(bits).count("1")
        prefix = length if bits == (0xFFFFFFFF << (32 - length)) & 0xFFFFFFFF else None
    else:
        prefix = _unsigned(arg)
    if prefix is None or prefix > 32:
        raise UsageError(f"Invalid prefix length: {arg}")
    st.netmask = prefix
    st.update("ip4", prefix_len=prefix)


def _on_gateway(st: _State, arg: str) -> None:
    addr = _checked_ip(arg, "Invalid gateway address", _unspecified, _loopback, _is_broadcast)
    st.update_family(addr, "gateway")


def _on_outbound(st: _State, arg: str) -> None:
    addr = _checked_ip(
        arg, "Invalid or redundant outbound address",
        _unspecified, _multicast, _is_broadcast, _is_v4compat,
        lambda a: a.version == 6 and (a.is_loopback or a.ipv4_mapped is not None),
    )  # fmt: skip
    st.update_family(addr, "outbound")


def _on_dns(st: _State, arg: str) -> None:
    """-D ADDR adds a resolver; -D none drops every DNS setting given so far."""
    if arg == "none":
        st.update("dns", servers=(), disabled=True)
        for family in ("ip4", "ip6"):
            st.update(family, dns_forward=None, dns_host=None)
        return
    addr = _ip(arg)
    if addr is None:
        raise UsageError(f"Cannot use DNS address {arg}")
    st.update("dns", servers=(*st.opts.dns.servers, addr), disabled=False)


def _on_search(st: _State, arg: str) -> None:
    if arg == "none":
        st.update("dns", search=(), search_disabled=True)
        return
    domains = arg.split()
    if not domains or not all(len(d) <= MAX_DNAME and is_domain_name(d) for d in domains):
        raise UsageError(f"Cannot use DNS search domain {arg}")
    st.update("dns", search=(*st.opts.dns.search, *domains), search_disabled=False)


def _on_dns_forward(st: _State, arg: str) -> None:
    addr = _checked_ip(
        arg, "Invalid DNS forwarding address", _unspecified, _loopback, _is_broadcast
    )
    st.update_family(addr, "dns_forward")


def _on_dns_host(st: _State, arg: str) -> None:
    addr = _checked_ip(arg, "Invalid host nameserver address", _unspecified, _is_broadcast)
    st.update_family(addr, "dns_host")


def _nat(field: str, none_disables_gw: bool) -> Handler:
    """--map-host-loopback / --map-guest-addr: ADDR for its family, or none for both."""

    def handler(st: _State, arg: str) -> None:
        if arg == "none":
            for family in ("ip4", "ip6"):
                st.update(family, **{field: None})
            if none_disables_gw:
                st.update(no_map_gw=True)
            return
        addr = _checked_ip(
            arg, "Invalid address to remap to host", _unspecified, _loopback, _multicast
        )
        st.update_family(addr, field)

    return handler


def _on_one_only(family: int) -> Handler:
    """-4 / -6. pasta 2023 refuses both together, which is clearer than "last one wins"."""

    def handler(st: _State, _arg: str) -> None:
        st.update(**{f"ipv{family}_only": True})
        if st.opts.ipv4_only and st.opts.ipv6_only:
            raise UsageError("Options ipv4-only and ipv6-only are mutually exclusive")

    return handler


def _on_port(letter: str) -> Handler:
    def handler(st: _State, arg: str) -> None:
        st.port_args.append((letter, arg))

    return handler


def _on_userns(st: _State, arg: str) -> None:
    st.update("ns", userns=_bounded(arg, PATH_MAX, "Invalid userns"), netns_only=False)


def _on_netns(st: _State, arg: str) -> None:
    """--netns NAME means /run/netns/NAME, as ip-netns(8) names them."""
    path = arg if "/" in arg else f"{NETNS_RUN_DIR}/{arg}"
    if len(path) >= PATH_MAX:
        raise UsageError(f"Network namespace name/path {arg} too long")
    st.update("ns", netns=path)


def _ifname_in(part: str, field: str) -> Handler:
    return _store(part, field, _ifname)


def _path_in(part: str, field: str, limit: int, message: str) -> Handler:
    return _store(part, field, lambda arg: _bounded(arg, limit, message))


def _name(message: str) -> Callable[[str], str]:
    """A name DHCP and DHCPv6 will send: a domain name (labels of 1 to 63 bytes)."""
    def check(arg: str) -> str:
        if not is_domain_name(_bounded(arg, MAX_DNAME + 1, message)):
            raise UsageError(f"{message}: {arg}")
        return arg
    return check


_HANDLERS: dict[str, Handler] = {
    "debug": _set("log", debug=True, quiet=False),
    "trace": _set("log", trace=True, debug=True, quiet=False),
    "quiet": _on_quiet,
    "foreground": _set("log", foreground=True),
    "stderr": _set("log", stderr=True),
    "log-file": _store("log", "log_file"),
    "log-size": _on_log_size,
    "stats": _on_stats,
    "runas": _store("", "runas", _runas),
    "socket": _path_in("", "socket_path", UNIX_PATH_MAX, "Invalid socket path"),
    "conf-path": _path_in("", "control_path", UNIX_PATH_MAX, "Invalid configuration path"),
    "api-socket": _path_in("", "api_socket", UNIX_PATH_MAX, "Invalid API socket path"),
    "follow-host": _set("", follow_host=True),
    "fd": _on_fd,
    "one-off": _set("", one_off=True),
    "ns-ifname": _ifname_in("ns", "ifname"),
    "pcap": _path_in("", "pcap", PATH_MAX, "Invalid pcap path"),
    "pid": _path_in("", "pid_file", PATH_MAX, "Invalid PID file"),
    "mtu": _on_mtu,
    "address": _on_address,
    "netmask": _on_netmask,
    "mac-addr": _store("", "mac_addr", _mac),
    "ns-mac-addr": _store("ns", "mac_addr", _mac),
    "gateway": _on_gateway,
    "interface": _store("", "interface", _ifname),
    "outbound": _on_outbound,
    "outbound-if4": _ifname_in("ip4", "outbound_if"),
    "outbound-if6": _ifname_in("ip6", "outbound_if"),
    "dns": _on_dns,
    "search": _on_search,
    "dhcp-dns": _set("dns", dhcp_dns=True),
    "no-dhcp-dns": _set("dns", dhcp_dns=False),
    "dhcp-search": _set("dns", dhcp_search=True),
    "no-dhcp-search": _set("dns", dhcp_search=False),
    "dns-forward": _on_dns_forward,
    "dns-host": _on_dns_host,
    "hostname": _store("", "hostname", _name("Invalid hostname")),
    "fqdn": _store("", "fqdn", _name("Invalid FQDN")),
    "no-tcp": _set("", no_tcp=True),
    "no-udp": _set("", no_udp=True),
    "no-icmp": _set("", no_icmp=True),
    "no-dhcp": _set("", no_dhcp=True),
    "no-ndp": _set("", no_ndp=True),
    "no-dhcpv6": _set("", no_dhcpv6=True),
    "no-ra": _set("", no_ra=True),
    "no-map-gw": _set("", no_map_gw=True),
    "map-gw": _set("", no_map_gw=False),
    "map-host-loopback": _nat("map_host_loopback", none_disables_gw=True),
    "map-guest-addr": _nat("map_guest_addr", none_disables_gw=False),
    "ipv4-only": _on_one_only(4),
    "ipv6-only": _on_one_only(6),
    **{key: _on_port(letter) for key, letter in _PORT_KEYS.items()},
    "userns": _on_userns,
    "netns": _on_netns,
    "netns-only": _set("ns", netns_only=True, userns=None),
    "no-netns-quit": _set("ns", no_netns_quit=True),
    "config-net": _set("ns", config_net=True),
    "no-copy-routes": _set("ns", no_copy_routes=True),
    "no-copy-addrs": _set("ns", no_copy_addrs=True),
    "host-lo-to-ns-lo": _set("", host_lo_to_ns_lo=True),
    "splice-only": _set("", splice_only=True),
    "no-splice": _set("", no_splice=True),
    "freebind": _set("", freebind=True),
    "chroot-fallback": _set("", chroot_fallback=True),
}

_IMMEDIATE = {"help": Action.HELP, "version": Action.VERSION}


def ephemeral_ports() -> PortRange:
    """The host's ephemeral port range, which "all other ports" specs leave out."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return parse_ephemeral_range(f.read())
    except (OSError, ValueError):
        return EPHEMERAL_PORTS


def parse_args(
    argv: Sequence[str],
    prog: str = "pasta-net",
    passt: bool = False,
    *,
    ephemeral: PortRange = EPHEMERAL_PORTS,
) -> Options:
    """Parse pasta's (or, with ``passt``, passt's) arguments, ``argv`` without argv[0].

    ``prog`` prefixes getopt-level errors, as glibc uses argv[0]. ``ephemeral`` is the
    host's ephemeral port range, which "all other ports" specs leave out. Raises
    :class:`UsageError`; -h and --version stop parsing right there, as in pasta.
    """
    mode = Mode.PASST if passt else Mode.PASTA
    st = _State(_initial(mode), ephemeral)
    getopt = _GetOpt(argv, prog, help_text(prog, passt=passt))
    for key, arg in getopt:
        if key in _IMMEDIATE:
            return attrs.evolve(st.opts, action=_IMMEDIATE[key])
        allowed, refusal = _MODE_ONLY.get(key, (mode, ""))
        if allowed is not mode:
            raise UsageError(refusal)
        _HANDLERS[key](st, arg or "")
    _check_combinations(st)
    _parse_ports(st)
    _apply_target(st, getopt.rest)
    _apply_implications(st)
    return st.opts


def _initial(mode: Mode) -> Options:
    """pasta leaves the DNS list out of DHCP unless asked; passt puts it in."""
    passt = mode is Mode.PASST
    return Options(mode=mode, dns=Dns(dhcp_dns=passt, dhcp_search=passt))


def _check_combinations(st: _State) -> None:
    """conf.c's checks after the option loop, in its order, then -4/-6 against addresses."""
    if st.opts.mode is Mode.PASST:
        if st.opts.splice_only:
            raise UsageError("--splice-only is for pasta mode only")
        st.update(no_splice=True)  # passt has no loopback path to splice
    o = st.opts
    if o.no_splice and o.host_lo_to_ns_lo:
        raise UsageError("--host-lo-to-ns-lo is incompatible with --no-splice")
    if o.mode is Mode.PASTA and not o.ns.config_net:
        for flag, given in (("routes", o.ns.no_copy_routes), ("addrs", o.ns.no_copy_addrs)):
            if given:
                raise UsageError(f"--no-copy-{flag} needs --config-net")
    if o.splice_only and o.no_splice:
        raise UsageError("--splice-only is incompatible with --no-splice")
    _check_disabled_family(o)


def _check_disabled_family(o: Options) -> None:
    """An address of the family -4/-6 turned off is a mistake worth reporting."""
    if not (o.ipv4_only or o.ipv6_only):
        return
    ip, flag = (o.ip6, "--ipv4-only") if o.ipv4_only else (o.ip4, "--ipv6-only")
    for what, addr in (("address", ip.address), ("gateway", ip.gateway),
                       ("outbound address", ip.outbound)):  # fmt: skip
        if addr is not None:
            raise UsageError(f"IPv{addr.version} {what} {addr} given with {flag}")


def _parse_ports(st: _State) -> None:
    """pasta's second pass over -t/-u/-T/-U, once everything else is known."""
    specs: dict[str, list[PortSpec]] = {}
    for letter, text in st.port_args:
        try:
            spec = parse_port_spec(text, ephemeral=st.ephemeral)
        except PortSpecError as err:
            raise UsageError(err.describe(f"-{letter}")) from None
        _check_port_spec(st.opts, letter, spec, specs.setdefault(letter, []))
        specs[letter].append(spec)
    st.update("ports", **{_PORT_FIELDS[k]: tuple(v) for k, v in specs.items()})


def _check_port_spec(o: Options, letter: str, spec: PortSpec, earlier: list[PortSpec]) -> None:
    if spec.mode is PortMode.NONE:
        if any(e.forwards for e in earlier):
            raise UsageError(f"-{letter} none conflicts with previous options")
        return
    if spec.mode is PortMode.AUTO and o.mode is Mode.PASST:
        raise UsageError("'auto' port forwarding is only allowed for pasta")
    if spec.prefix is not None and letter in "TU":
        raise UsageError(f"Listening address not allowed for -{letter} {spec.text}")
    proto = "TCP" if letter in "tT" else "UDP"
    if o.no_tcp if proto == "TCP" else o.no_udp:
        raise UsageError(f"Can't use -{letter} {spec.text}: {proto} is disabled")
    for other in earlier:
        if spec.overlap(other):
            raise UsageError(
                f"Overlapping port specifier '{spec.text}' for -{letter}: "
                f"ports also forwarded by '-{letter} {other.text}'"
            )
    _check_port_families(o, spec)


def _check_port_families(o: Options, spec: PortSpec) -> None:
    """Addresses in a spec must belong to an enabled family; a rule listening on both
    families cannot target an address of one, unless -4 or -6 leaves only that one."""
    family = 4 if o.ipv4_only else 6 if o.ipv6_only else None
    for fwd in spec.forwards:
        for addr in (fwd.addr, fwd.to_addr):
            if addr is not None and family not in (None, addr.version):
                raise UsageError(f"IPv{addr.version} forward '{spec.text}', but "
                                 f"IPv{addr.version} is disabled by --ipv{family}-only")
        if fwd.addr is None and fwd.to_addr is not None and family is None:
            wildcard = "0.0.0.0" if fwd.to_addr.version == 4 else "[::]"
            raise UsageError(
                f"Dual stack forward to IPv{fwd.to_addr.version} address {fwd.to_addr} "
                f"unsupported in '{spec.text}': did you mean {wildcard}/... instead?"
            )


def _apply_target(st: _State, rest: list[str]) -> None:
    """What follows the options: passt takes nothing; pasta a PID, or a command."""
    o = st.opts
    if o.mode is Mode.PASST:
        if rest:
            raise UsageError(f"Extra non-option argument: {rest[0]}")
        return
    if o.ns.netns and rest:
        raise UsageError("Both --netns and PID or command given")
    if len(rest) == 1 and _digits(rest[0]):
        _apply_pid(st, rest[0])
    else:
        st.update(command=tuple(rest))
    if st.opts.ns.netns and not st.opts.ns.userns:
        st.update("ns", netns_only=True)


def _apply_pid(st: _State, text: str) -> None:
    pid = int(text)
    if pid > INT_MAX:
        raise UsageError(f"Invalid PID {text}")
    ns = st.opts.ns
    userns = ns.userns or (None if ns.netns_only else f"/proc/{pid}/ns/user")
    st.update(pid=pid)
    st.update("ns", netns=f"/proc/{pid}/ns/net", userns=userns)


def _apply_implications(st: _State) -> None:
    """Settings pasta derives from others, so every consumer sees the effective ones."""
    if st.opts.splice_only:  # no tap: only loopback forwarding between the namespaces
        st.update(host_lo_to_ns_lo=True, no_icmp=True)
        st.update("dns", disabled=True, search_disabled=True)
    if st.opts.no_icmp:
        st.update(no_ndp=True)  # NDP is ICMPv6
    if st.opts.ns.config_net:
        st.update(no_ra=True)  # addresses and routes are set through netlink instead


# --- texts -----------------------------------------------------------------------------


def version_text(prog: str) -> str:
    """--version: first line ``NAME VERSION``, which podman shows in ``podman info``."""
    return (
        f"{os.path.basename(prog)} {__version__} (pasta-net)\n"
        "A Python reimplementation of passt/pasta.\n"
        "This is free software: you are free to change and redistribute it.\n"
        "There is NO WARRANTY, to the extent permitted by law.\n\n"
    )


def help_text(prog: str, *, passt: bool = False) -> str:
    """-h: pasta's usage text for this program's options (passt's with ``passt``)."""
    guest, default = ("guest", "none") if passt else ("namespace", "auto")
    head = (
        f"Usage: {prog} [OPTION]...\n"
        if passt
        else f"Usage: {prog} [OPTION]... [COMMAND] [ARGS]...\n"
        f"       {prog} [OPTION]... PID\n"
        f"       {prog} [OPTION]... --netns [PATH|NAME]\n"
        "\n"
        "Without PID or --netns, run the given command or a\n"
        "default shell in a new network and user namespace, and\n"
        "connect it via pasta.\n"
    )
    common = _HELP_COMMON.format(**(_HELP_COMMON_PASST if passt else _HELP_COMMON_PASTA))
    ports = _HELP_PORTS.format(
        guest=guest, default=default,
        auto="" if passt else _HELP_AUTO, auto_examples="" if passt else _HELP_AUTO_EXAMPLES,
    )  # fmt: skip
    return head + common + ports + (_HELP_PASST if passt else _HELP_PASTA)


_HELP_COMMON = """
  -d, --debug\t\tBe verbose
      --trace\t\tBe extra verbose, implies --debug
  --stats DELAY  \tDisplay events statistics
    minimum DELAY seconds between updates
  -q, --quiet\t\tDon't print informational messages
  -f, --foreground\tDon't run in background
    default: run in background
  -e, --stderr\t\tLog to stderr too
  -l, --log-file PATH\tLog (only) to given file
  --log-size BYTES\tMaximum size of log file
    default: 1 MiB
  --runas UID|UID:GID \tRun as given UID, GID, which can be
    numeric, or login and group names
    default: drop to user "nobody"
  -c, --conf-path, --control PATH\tConfiguration socket path
  --api-socket PATH\tpasta-net API socket path
  --follow-host\t\tFollow host address changes
  -h, --help\t\tDisplay this help message and exit
  --version\t\tShow version and exit
{socket}  -F, --fd FD\t\tUse FD as pre-opened connected socket
  -p, --pcap FILE\tLog tap-facing traffic to pcap file
  -P, --pid FILE\tWrite own PID to the given file
  -m, --mtu MTU\tAssign MTU via DHCP/NDP
    a zero value disables assignment
    default: 65520: maximum 802.3 MTU minus 802.3 header
                    length, rounded to 32 bits (IPv4 words)
  -a, --address ADDR\tAssign IPv4 or IPv6 address ADDR[/PREFIXLEN]
    can be specified zero to two times (for IPv4 and IPv6)
    default: use addresses from interface with default route
  -n, --netmask MASK\tAssign IPv4 MASK, dot-decimal or bits
    default: netmask from matching address on the host
  -M, --mac-addr ADDR\tUse source MAC address ADDR
    default: 9a:55:9a:55:9a:55 (locally administered)
  -g, --gateway ADDR\tPass IPv4 or IPv6 address as gateway
    default: gateway from interface with default route
  -i, --interface NAME\tInterface for addresses and routes
    default: from --outbound-if4 and --outbound-if6, if any
             otherwise interface with first default route
  -o, --outbound ADDR\tBind to address as outbound source
    can be specified zero to two times (for IPv4 and IPv6)
    default: use source address from routing tables
  --outbound-if4 NAME\tBind to outbound interface for IPv4
    default: use interface from default route
  --outbound-if6 NAME\tBind to outbound interface for IPv6
    default: use interface from default route
  -D, --dns ADDR\tUse IPv4 or IPv6 address as DNS
    can be specified multiple times
    a single, empty option disables DNS information
    default: {dns_default}
  -S, --search LIST\tSpace-separated list, search domains
    a single, empty option disables the DNS search list
    default: {search_default}
  -H, --hostname NAME \tHostname to configure client with
  --fqdn NAME\t\tFQDN to configure client with
{dhcp}  --map-host-loopback ADDR\tTranslate ADDR to refer to host
    can be specified zero to two times (for IPv4 and IPv6)
    default: gateway address
  --map-guest-addr ADDR\tTranslate ADDR to guest's address
    can be specified zero to two times (for IPv4 and IPv6)
    default: none
  --dns-forward ADDR\tForward DNS queries sent to ADDR
    can be specified zero to two times (for IPv4 and IPv6)
    default: don't forward DNS queries
  --dns-host ADDR\tHost nameserver to direct queries to
    can be specified zero to two times (for IPv4 and IPv6)
    default: first nameserver from host's /etc/resolv.conf
  --no-tcp\t\tDisable TCP protocol handler
  --no-udp\t\tDisable UDP protocol handler
  --no-icmp\t\tDisable ICMP/ICMPv6 protocol handler
  --no-dhcp\t\tDisable DHCP server
  --no-ndp\t\tDisable NDP responses
  --no-dhcpv6\t\tDisable DHCPv6 server
  --no-ra\t\tDisable router advertisements
  --freebind\t\tBind to any address for forwarding
  --no-map-gw\t\tDon't map gateway address to host
  --chroot-fallback\tUse chroot() if pivot_root() fails
  -4, --ipv4-only\tEnable IPv4 operation only
  -6, --ipv6-only\tEnable IPv6 operation only
"""

_HELP_PORTS = """\
  -t, --tcp-ports SPEC\tTCP port forwarding to {guest}
    can be specified multiple times
    SPEC can be:
      'none': don't forward any ports
      [ADDR[%IFACE]/]PORTS: forward specific ports
        PORTS is a comma-separated list of ports or port
         ranges.  'all' indicates all unbound non-ephemeral
         ports.  Ranges can be reduced by excluding ports or
         ranges prefixed by '~'.
{auto}        Examples:
        -t all\t\tForward all ports
        -t ::1/all\tForward all ports from local address ::1
        -t 22\t\tForward local port 22 to 22 on {guest}
        -t 22:23\tForward local port 22 to 23 on {guest}
        -t 22,25\tForward ports 22, 25 to ports 22, 25
        -t 22-80  \tForward ports 22 to 80
        -t 22-80:32-90\tForward ports 22 to 80 to
\t\t\tcorresponding port numbers plus 10
        -t 192.0.2.1/5\tBind port 5 of 192.0.2.1 to {guest}
        -t 5-25,~10-20\tForward ports 5 to 9, and 21 to 25
        -t ~25\t\tForward all ports except for 25
{auto_examples}    default: {default}
  -u, --udp-ports SPEC\tUDP port forwarding to {guest}
    SPEC is as described for TCP above
    default: {default}
"""

_HELP_AUTO = """\
        The 'auto' keyword may be given to only forward
        ports which are bound in the target namespace
"""

_HELP_AUTO_EXAMPLES = """\
        -t auto\t\tForward all ports bound in namespace
        -t ::1/auto\tForward ports from ::1 if they are
        \t\tbound in the namespace
        -t 80-82,auto\tForward ports 80-82 if they are bound
        \t\tin the namespace
"""

_HELP_COMMON_PASTA = {
    "socket": "  -I, --ns-ifname NAME\tnamespace interface name\n"
    "    default: same interface name as external one\n",
    "dns_default": "don't use any addresses",
    "search_default": "don't use any search list",
    "dhcp": "  --dhcp-dns\t\tPass DNS list via DHCP/DHCPv6/NDP\n"
    "  --dhcp-search\tPass list via DHCP/DHCPv6/NDP\n",
}

_HELP_COMMON_PASST = {
    "socket": "  -s, --socket, --socket-path PATH\tUNIX domain socket path\n"
    "    default: probe free path starting from /tmp/passt_1.socket\n",
    "dns_default": "use addresses from /etc/resolv.conf",
    "search_default": "use search list from /etc/resolv.conf",
    "dhcp": "  --no-dhcp-dns\tNo DNS list in DHCP/DHCPv6/NDP\n"
    "  --no-dhcp-search\tNo list in DHCP/DHCPv6/NDP\n",
}

_HELP_PASST = """\
  -1, --one-off\tQuit after handling one single client
"""

_HELP_PASTA = """\
  -T, --tcp-ns SPEC\tTCP port forwarding to init namespace
    SPEC is as described above
    default: auto
  -U, --udp-ns SPEC\tUDP port forwarding to init namespace
    SPEC is as described above
    default: auto
  --host-lo-to-ns-lo\tTranslate host-loopback forwards to
\t\t\tnamespace loopback
  --userns NSPATH \tTarget user namespace to join
  --netns PATH|NAME\tTarget network namespace to join
  --netns-only\t\tDon't join existing user namespace
    implied if PATH or NAME are given without --userns
  --no-netns-quit\tDon't quit if filesystem-bound target
  \t\t\tnetwork namespace is deleted
  --config-net\t\tConfigure tap interface in namespace
  --no-copy-routes\tDEPRECATED:
\t\t\tDon't copy all routes to namespace
  --no-copy-addrs\tDEPRECATED:
\t\t\tDon't copy all addresses to namespace
  --ns-mac-addr ADDR\tSet MAC address on tap interface
  --no-splice\t\tDisable inbound socket splicing
  --splice-only\tOnly enable loopback forwarding
"""
