"""The -t/-u/-T/-U grammar: every form of the passt.1 man page and pasta --help, podman's
forms, and each way a spec can be wrong."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pasta_net.core.portspec import (
    EPHEMERAL_PORTS,
    PortForward,
    PortMode,
    PortSpecError,
    parse_ephemeral_range,
    parse_port_spec,
)

Rule = tuple[str | None, str | None, int, int, str | None, int, bool, bool]


def rules(text: str, **kwargs: object) -> list[Rule]:
    """(addr, iface, first, last, to_addr, to_first, auto, weak) for each rule."""
    spec = parse_port_spec(text, **kwargs)  # type: ignore[arg-type]
    return [
        (
            None if f.addr is None else str(f.addr),
            f.iface,
            f.first,
            f.last,
            None if f.to_addr is None else str(f.to_addr),
            f.to_first,
            f.auto,
            f.weak,
        )
        for f in spec.forwards
    ]


def plain(first: int, last: int, to_first: int | None = None) -> Rule:
    return (None, None, first, last, None, first if to_first is None else to_first, False, False)


EVERY_OTHER_PORT = [(1, 49151)]


@pytest.mark.parametrize(
    ("text", "mode", "expected"),
    [
        # passt.1 / pasta --help examples
        ("22", PortMode.EXPLICIT, [plain(22, 22)]),
        ("22:23", PortMode.EXPLICIT, [plain(22, 22, 23)]),
        ("22,25", PortMode.EXPLICIT, [plain(22, 22), plain(25, 25)]),
        ("22-80", PortMode.EXPLICIT, [plain(22, 80)]),
        ("22-80:32-90", PortMode.EXPLICIT, [plain(22, 80, 32)]),
        ("192.0.2.1/22", PortMode.EXPLICIT, [("192.0.2.1", None, 22, 22, None, 22, False, False)]),
        ("192.0.2.1/5", PortMode.EXPLICIT, [("192.0.2.1", None, 5, 5, None, 5, False, False)]),
        (
            "192.0.2.1%eth0/22",
            PortMode.EXPLICIT,
            [("192.0.2.1", "eth0", 22, 22, None, 22, False, False)],
        ),
        ("%eth0/22", PortMode.EXPLICIT, [(None, "eth0", 22, 22, None, 22, False, False)]),
        ("2000-5000,~3000-3010", PortMode.EXPLICIT, [plain(2000, 2999), plain(3011, 5000)]),
        ("~3000-3010,2000-5000", PortMode.EXPLICIT, [plain(2000, 2999), plain(3011, 5000)]),
        ("5-25,~10-20", PortMode.EXPLICIT, [plain(5, 9), plain(21, 25)]),
        (
            "192.0.2.1/20-30,~25",
            PortMode.EXPLICIT,
            [
                ("192.0.2.1", None, 20, 24, None, 20, False, False),
                ("192.0.2.1", None, 26, 30, None, 26, False, False),
            ],
        ),
        ("22-80:32-90,~50", PortMode.EXPLICIT, [plain(22, 49, 32), plain(51, 80, 61)]),
        (
            "~20000-20010",
            PortMode.ALL,
            [(None, None, 1, 19999, None, 1, False, True),
             (None, None, 20011, 49151, None, 20011, False, True)],
        ),
        ("~25", PortMode.ALL, [(None, None, 1, 24, None, 1, False, True),
                               (None, None, 26, 49151, None, 26, False, True)]),
        ("all", PortMode.ALL, [(None, None, 1, 49151, None, 1, False, True)]),
        ("::1/all", PortMode.ALL, [("::1", None, 1, 49151, None, 1, False, True)]),
        (
            "127.0.0.6/all:192.0.2.6",
            PortMode.ALL,
            [("127.0.0.6", None, 1, 49151, "192.0.2.6", 1, False, True)],
        ),
        ("all,~22", PortMode.ALL, [(None, None, 1, 21, None, 1, False, True),
                                   (None, None, 23, 49151, None, 23, False, True)]),
        ("auto", PortMode.AUTO, [(None, None, 1, 49151, None, 1, True, True)]),
        ("::1/auto", PortMode.AUTO, [("::1", None, 1, 49151, None, 1, True, True)]),
        ("80-82,auto", PortMode.AUTO, [(None, None, 80, 82, None, 80, True, False)]),
        ("auto,8000-8010", PortMode.AUTO, [(None, None, 8000, 8010, None, 8000, True, False)]),
        (
            "0.0.0.0/5000:192.0.2.5/6000",
            PortMode.EXPLICIT,
            [("0.0.0.0", None, 5000, 5000, "192.0.2.5", 6000, False, False)],
        ),
        # podman's forms: always ranges, even for one port
        ("8080-8080:80-80", PortMode.EXPLICIT, [plain(8080, 8080, 80)]),
        ("80-80:60-60", PortMode.EXPLICIT, [plain(80, 80, 60)]),
        ("100-100:100-100", PortMode.EXPLICIT, [plain(100, 100)]),
        (
            "127.0.0.1/8080-8080:80-80",
            PortMode.EXPLICIT,
            [("127.0.0.1", None, 8080, 8080, None, 80, False, False)],
        ),
        # address forms
        ("*/80", PortMode.EXPLICIT, [plain(80, 80)]),
        ("/80", PortMode.EXPLICIT, [plain(80, 80)]),
        ("*%lo/80", PortMode.EXPLICIT, [(None, "lo", 80, 80, None, 80, False, False)]),
        ("[::1]/80", PortMode.EXPLICIT, [("::1", None, 80, 80, None, 80, False, False)]),
        ("::ffff:10.0.0.1/80", PortMode.EXPLICIT,
         [("10.0.0.1", None, 80, 80, None, 80, False, False)]),
        ("2001:db8::1%eth0/443", PortMode.EXPLICIT,
         [("2001:db8::1", "eth0", 443, 443, None, 443, False, False)]),
        ("::/80:[::2]/90", PortMode.EXPLICIT, [("::", None, 80, 80, "::2", 90, False, False)]),
        ("80:::1", PortMode.EXPLICIT, [(None, None, 80, 80, "::1", 80, False, False)]),
        ("10.0.0.1/80-81:10.0.0.2", PortMode.EXPLICIT,
         [("10.0.0.1", None, 80, 81, "10.0.0.2", 80, False, False)]),
        ("65535", PortMode.EXPLICIT, [plain(65535, 65535)]),
        ("1-65535", PortMode.EXPLICIT, [plain(1, 65535)]),
        ("80-90,~85,85", PortMode.EXPLICIT, [plain(80, 84), plain(86, 90)]),
        ("80,all", PortMode.EXPLICIT, [plain(80, 80)]),  # pasta ignores "all" beside ranges
    ],
)  # fmt: skip
def test_forms(text: str, mode: PortMode, expected: list[Rule]) -> None:
    spec = parse_port_spec(text)
    assert spec.mode is mode
    assert spec.text == text
    assert rules(text) == expected


def test_none_forwards_nothing() -> None:
    spec = parse_port_spec("none")
    assert spec.mode is PortMode.NONE
    assert spec.forwards == ()
    assert spec.target(80) is None
    assert spec.bind_ports() == []


@pytest.mark.parametrize(
    ("text", "prefix"),
    [("80", None), ("1.2.3.4/80", "1.2.3.4"), ("%eth0/80", "%eth0"), ("*/80", "*"), ("/80", "")],
)
def test_prefix_records_a_listening_specification(text: str, prefix: str | None) -> None:
    assert parse_port_spec(text).prefix == prefix


def test_host_ephemeral_range_is_left_out() -> None:
    """Linux's default ip_local_port_range leaves 61000-65535 to "all other ports"."""
    assert rules("~22", ephemeral=(32768, 60999)) == [
        (None, None, 1, 21, None, 1, False, True),
        (None, None, 23, 32767, None, 23, False, True),
        (None, None, 61000, 65535, None, 61000, False, True),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("32768\t60999\n", (32768, 60999)),
        ("1024 65535", (1024, 65535)),
        ("", EPHEMERAL_PORTS),
        ("60999 32768", EPHEMERAL_PORTS),
        ("a b", EPHEMERAL_PORTS),
        ("1 70000", EPHEMERAL_PORTS),
    ],
)
def test_parse_ephemeral_range(text: str, expected: tuple[int, int]) -> None:
    assert parse_ephemeral_range(text) == expected


@pytest.mark.parametrize(
    ("text", "port", "target"),
    [
        ("22-80:32-90", 22, 32),
        ("22-80:32-90", 80, 90),
        ("22-80:32-90", 81, None),
        ("8080-8080:80-80", 8080, 80),
        ("8080-8080:80-80", 80, None),
        ("2000-5000,~3000-3010", 3005, None),
        ("2000-5000,~3000-3010", 3011, 3011),
        ("~25", 25, None),
        ("~25", 26, 26),
        ("~25", 49152, None),
        ("auto", 8080, 8080),
        ("none", 22, None),
    ],
)
def test_target(text: str, port: int, target: int | None) -> None:
    assert parse_port_spec(text).target(port) == target


def test_bind_ports() -> None:
    assert parse_port_spec("25,5-9,~7").bind_ports() == [5, 6, 8, 9, 25]
    assert len(parse_port_spec("all").bind_ports()) == 49151


def test_forward_helpers() -> None:
    fwd = parse_port_spec("22-80:32-90").forwards[0]
    assert fwd.to_last == 90
    assert 22 in fwd
    assert 81 not in fwd
    assert fwd.ports() == range(22, 81)


@pytest.mark.parametrize(
    ("a", "b", "collide"),
    [
        ("80", "80", True),
        ("80-90", "85,100", True),
        ("80", "81", False),
        ("127.0.0.1/80", "80", True),  # dual stack covers every address
        ("127.0.0.1/80", "127.0.0.2/80", False),
        ("127.0.0.1/80", "0.0.0.0/80", True),
        ("127.0.0.1/80", "::/80", False),
        ("::1/80", "::/80", True),
        ("none", "80", False),
    ],
)
def test_overlap_between_specs(a: str, b: str, collide: bool) -> None:
    assert (parse_port_spec(a).overlap(parse_port_spec(b)) is not None) is collide
    assert (parse_port_spec(b).overlap(parse_port_spec(a)) is not None) is collide


CHUNK = "expected a port, a range, '~', 'all' or 'auto'"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty specifier"),
        ("abc", f"{CHUNK} at 'abc'"),
        ("8000-7000", "range 8000-7000 ends before it starts"),
        ("0", "port 0 cannot be forwarded"),
        ("80:0", "port 0 cannot be forwarded"),
        ("~0", "port 0 cannot be forwarded"),
        ("70000", "port 70000 is out of range (1-65535)"),
        ("1-65536", "port 65536 is out of range (1-65535)"),
        ("99999999999999999999", "port 99999999999999999999 is out of range (1-65535)"),
        ("80:90-91", "80 (1 port) and its target 90-91 (2 ports) differ in size"),
        ("1-5:10-12", "1-5 (5 ports) and its target 10-12 (3 ports) differ in size"),
        ("80-", "missing last port after '80-'"),
        ("-80", f"{CHUNK} at '-80'"),
        ("+80", f"{CHUNK} at '+80'"),
        ("80,", f"{CHUNK} at the end"),
        (",80", f"{CHUNK} at ',80'"),
        ("80 ", "unexpected ' '"),
        ("80x", "unexpected 'x'"),
        ("1.2.3.4", "unexpected '.2.3.4'"),
        ("80:", "expected a target port or address after ':' at the end"),
        ("80:1.2.3.4/", "expected a target port after '1.2.3.4/' at the end"),
        ("~", "expected a port or range after '~' at the end"),
        ("all:", "expected a target address after 'all:' at the end"),
        ("all:80", "expected a target address after 'all:' at '80'"),
        ("autox", "unexpected 'x'"),
        ("none,80", "'none' cannot be combined with other specifiers"),
        ("80,none", "'none' cannot be combined with other specifiers"),
        ("1.2.3.4/none", "'none' cannot be combined with other specifiers"),
        ("%/80", "empty interface name after '%'"),
        ("%abcdefghijklmnop/80", "interface name 'abcdefghijklmnop' is longer than 15 characters"),
        ("%../80", "invalid interface name '..'"),
        ("1.2.3.4%eth0", "unexpected '.2.3.4%eth0'"),
        ("fe80::1%eth0", f"{CHUNK} at 'fe80::1%eth0'"),
        ("[::1/80", f"{CHUNK} at '[::1/80'"),
        ("1.2.3.4/80:::1", "forward from IPv4 (1.2.3.4) to IPv6 (::1) is unsupported"),
        ("::1/all:1.2.3.4", "forward from IPv6 (::1) to IPv4 (1.2.3.4) is unsupported"),
        ("80:224.0.0.1", "target address 224.0.0.1 is multicast"),
    ],
)
def test_errors(text: str, reason: str) -> None:
    with pytest.raises(PortSpecError) as info:
        parse_port_spec(text)
    assert str(info.value) == f"Invalid port specifier '{text}': {reason}"
    assert (info.value.spec, info.value.reason) == (text, reason)
    assert not info.value.overlapping


@pytest.mark.parametrize(
    ("text", "ports"),
    [("80,80", "80"), ("80-90,85", "85"), ("80-90,85-95", "85-90"), ("1-10:101-110,5:200", "5")],
)
def test_ports_given_twice(text: str, ports: str) -> None:
    with pytest.raises(PortSpecError) as info:
        parse_port_spec(text)
    assert str(info.value) == (
        f"Overlapping port specifier '{text}': port {ports} is given more than once"
    )
    assert info.value.overlapping


def test_error_names_the_option() -> None:
    with pytest.raises(PortSpecError) as info:
        parse_port_spec("8000-7000")
    assert info.value.describe("-t") == (
        "Invalid port specifier '8000-7000' for -t: range 8000-7000 ends before it starts"
    )


def test_overlapping_exclusions_are_fine() -> None:
    """Upstream dropped its old "overlapping exclusion" error: excluding twice is harmless."""
    assert rules("~80,~80,70-90") == [plain(70, 79), plain(81, 90)]


@given(st.text(alphabet="0123456789-:,~/%.abcdefilnotu*[]", max_size=24))
def test_any_text_parses_or_raises_portspecerror(text: str) -> None:
    try:
        spec = parse_port_spec(text)
    except PortSpecError:
        return
    for fwd in spec.forwards:
        assert 1 <= fwd.first <= fwd.last <= 65535
        assert 1 <= fwd.to_first <= fwd.to_last <= 65535


@st.composite
def disjoint_ranges(draw: st.DrawFn) -> list[tuple[int, int, int]]:
    """Up to five (first, last, to_first) with no two listening ranges overlapping."""
    cuts = sorted(draw(st.sets(st.integers(1, 65535), min_size=2, max_size=10)))
    pairs = list(zip(cuts[::2], cuts[1::2], strict=False))
    return [
        (first, last, draw(st.integers(1, 65535 - (last - first))))
        for first, last in pairs
    ]


@given(disjoint_ranges(), st.integers(1, 65535))
def test_target_follows_the_ranges(ranges: list[tuple[int, int, int]], port: int) -> None:
    text = ",".join(f"{a}-{b}:{t}-{t + b - a}" for a, b, t in ranges)
    expected = next((t + port - a for a, b, t in ranges if a <= port <= b), None)
    assert parse_port_spec(text).target(port) == expected


def test_records_are_frozen_and_comparable() -> None:
    fwd = PortForward(first=80, last=80, to_first=8080, addr=ipaddress.ip_address("::1"))
    assert fwd == parse_port_spec("[::1]/80:8080").forwards[0]
    with pytest.raises(AttributeError):
        fwd.first = 81  # type: ignore[misc]
