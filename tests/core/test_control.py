"""Control requests and replies: the native JSON lines and slirp4netns' API, as bytes."""

from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pasta_net.core.control import (
    MAX_RUNTIME_PORTS,
    AddForward,
    Forward,
    ListForwards,
    ListHostfwd,
    ReadStats,
    RemoveForward,
    RequestError,
    Stats,
    check_new_forward,
    check_runtime_spec,
    error_reply,
    forward_json,
    hostfwd_json,
    parse_line,
    parse_slirp,
    reply,
)
from pasta_net.core.portspec import parse_port_spec

NS4 = ipaddress.ip_address("198.51.100.2").packed
NS6 = ipaddress.ip_address("2001:db8:1::2").packed


def line(**request: object) -> bytes:
    return json.dumps(request).encode()


def slirp_error(data: bytes) -> str:
    with pytest.raises(RequestError) as caught:
        parse_slirp(data)
    return str(caught.value)


# ------------------------------------------------------------------ native --
def test_add_parses_the_spec_like_the_command_line() -> None:
    request = parse_line(line(command="add", option="-t", spec="8080:80"))
    assert request.command == AddForward("-t", parse_port_spec("8080:80"))
    assert request.error_prefix == ""


@pytest.mark.parametrize(("request_", "command"), [
    ({"command": "list"}, ListForwards()),
    ({"command": "stats"}, ReadStats()),
    ({"command": "remove", "id": 3}, RemoveForward(3)),
])
def test_other_commands(request_: dict, command: object) -> None:
    assert parse_line(json.dumps(request_).encode()).command == command


@pytest.mark.parametrize(("data", "message"), [
    (b"{nope", "cannot parse JSON"),
    (b"[1, 2]", "a request must be a JSON object"),
    (line(command="dance"), 'unknown command "dance"; known: add, list, remove, stats'),
    (line(verb="list"), "unknown command null; known: add, list, remove, stats"),
    (line(command=["add"]), 'unknown command ["add"]; known: add, list, remove, stats'),
    (line(command="add", option="-x", spec="80"), '"option" must be one of -t, -u, -T, -U'),
    (line(command="add", option=["-t"], spec="80"), '"option" must be one of -t, -u, -T, -U'),
    (line(command="add", option="-t", spec=80), '"spec" must be a port specifier of at most'),
    (line(command="add", option="-t", spec="8000-7000"),
     "Invalid port specifier '8000-7000' for -t: range 8000-7000 ends before it starts"),
    (line(command="remove", id="3"), '"id" must be the positive integer id of a forward'),
    (line(command="remove", id=True), '"id" must be the positive integer id of a forward'),
    (line(command="remove", id=0), '"id" must be the positive integer id of a forward'),
    (b"[" * 100_000 + b"]" * 100_000, "cannot parse JSON"),
    (b"\xff\xfe{", "cannot parse JSON"),
    (b'{"command": "remove", "id": ' + b"9" * 5000 + b"}", "cannot parse JSON"),
])
def test_bad_native_requests_say_why(data: bytes, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        parse_line(data)
    assert str(caught.value).startswith(message)


def test_a_slirp_request_on_the_native_socket_works_too() -> None:
    request = parse_line(line(execute="list_hostfwd"))
    assert request.command == ListHostfwd()


@given(st.binary(max_size=300))
def test_any_bytes_give_a_request_or_a_request_error(data: bytes) -> None:
    for parse in (parse_line, parse_slirp):
        try:
            parse(data)
        except RequestError:
            pass


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
                    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_any_json_gives_a_request_or_a_request_error(value: object) -> None:
    for wrapper in ({"command": "add", "option": "-t", "spec": value},
                    {"command": "remove", "id": value}, {"command": value},
                    {"execute": "add_hostfwd", "arguments": value},
                    {"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": value,
                                                             "host_port": value}},
                    {"execute": "remove_hostfwd", "arguments": {"id": value}}):
        for parse in (parse_line, parse_slirp):
            try:
                parse(json.dumps(wrapper).encode())
            except RequestError:
                pass


# ------------------------------------------------------------- slirp4netns --
# The man page's examples (slirp4netns.1, "API SOCKET"), byte for byte.
MAN_ADD = (b'{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",'
           b' "host_port": 8080, "guest_addr": "10.0.2.100", "guest_port": 80}}')


def test_man_page_add_hostfwd() -> None:
    request = parse_slirp(MAN_ADD)
    assert request.command == AddForward(
        "-t", parse_port_spec("0.0.0.0/8080:80"), ipaddress.ip_address("10.0.2.100"))
    assert request.error_prefix == "bad request: add_hostfwd: "


def test_man_page_list_and_remove() -> None:
    assert parse_slirp(b'{"execute": "list_hostfwd"}').command == ListHostfwd()
    request = parse_slirp(b'{"execute": "remove_hostfwd", "arguments": {"id": 42}}')
    assert request.command == RemoveForward(42)


def test_add_hostfwd_defaults_as_slirp4netns() -> None:
    """host_addr missing or "" (podman sends "") is 0.0.0.0; guest_addr is ours."""
    for extra in ({}, {"host_addr": ""}, {"guest_addr": ""}):
        arguments = {"proto": "udp", "host_port": 5353, "guest_port": 53, **extra}
        request = parse_slirp(json.dumps({"execute": "add_hostfwd",
                                          "arguments": arguments}).encode())
        assert request.command == AddForward("-u", parse_port_spec("0.0.0.0/5353:53"))


def test_add_hostfwd_takes_ipv6_which_slirp4netns_lacks() -> None:
    request = parse_slirp(json.dumps({"execute": "add_hostfwd", "arguments": {
        "proto": "tcp", "host_addr": "::", "host_port": 8080, "guest_port": 80}}).encode())
    assert request.command == AddForward("-t", parse_port_spec("[::]/8080:80"))


@pytest.mark.parametrize(("data", "desc"), [
    (b"badjson\n", "bad request: cannot parse JSON"),
    (b"", "bad request: cannot parse JSON"),
    (b"[1]", "bad request: json_object() failed"),
    (b'{"unexpectedjson": 42}', "bad request: no execute found"),
    (b'{"execute": "bad"}', "bad request: unknown execute"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "bad"}}',
     "bad request: add_hostfwd: bad arguments.proto"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "tcp", "host_addr": "x", '
     b'"host_port": 1, "guest_port": 1}}', "bad request: add_hostfwd: bad arguments.host_addr"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "tcp", "guest_port": 1}}',
     "bad request: add_hostfwd: bad arguments.host_port"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "tcp", "host_port": 70000, '
     b'"guest_port": 1}}', "bad request: add_hostfwd: bad arguments.host_port"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "tcp", "host_port": 1}}',
     "bad request: add_hostfwd: bad arguments.guest_port"),
    (b'{"execute": "add_hostfwd", "arguments":{"proto": "tcp", "host_port": 1, '
     b'"guest_addr": "::1", "guest_port": 1}}',
     "bad request: add_hostfwd: bad arguments.guest_addr"),
    (b'{"execute": "remove_hostfwd", "arguments": {}}',
     "bad request: remove_hostfwd: bad arguments.id"),
    (b"0" * 4096, "bad request: too large message"),
])
def test_slirp4netns_error_texts(data: bytes, desc: str) -> None:
    """The texts slirp4netns 1.2.0 writes (its api.c and test-slirp4netns-api-socket.sh)."""
    assert slirp_error(data) == desc


def test_a_zone_index_in_host_addr_is_a_bad_argument_not_a_bind_error() -> None:
    assert slirp_error(b'{"execute": "add_hostfwd", "arguments": {"proto": "tcp", '
                       b'"host_addr": "fe80::1%eth0", "host_port": 8080, "guest_port": 80}}'
                       ) == "bad request: add_hostfwd: bad arguments.host_addr"


def test_slirp4netns_numbers_may_be_floats_like_its_json_library_reads_them() -> None:
    request = parse_slirp(b'{"execute": "remove_hostfwd", "arguments": {"id": 4.0}}')
    assert request.command == RemoveForward(4)


# ----------------------------------------------------------------- replies --
def test_replies_are_compact_like_slirp4netns() -> None:
    assert reply({"id": 1}) == b'{"return":{"id":1}}'
    assert reply({}) == b'{"return":{}}'
    assert error_reply("bad request: unknown execute") == (
        b'{"error":{"desc":"bad request: unknown execute"}}')


def test_hostfwd_entry_has_slirp4netns_fields() -> None:
    forward = Forward(42, "-t", parse_port_spec("0.0.0.0/8080:80"))
    assert hostfwd_json(forward, NS4, NS6) == {
        "id": 42, "proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8080,
        "guest_addr": "198.51.100.2", "guest_port": 80}
    v6 = Forward(43, "-u", parse_port_spec("[::]/53"))
    assert hostfwd_json(v6, NS4, NS6) == {
        "id": 43, "proto": "udp", "host_addr": "::", "host_port": 53,
        "guest_addr": "2001:db8:1::2", "guest_port": 53}


def test_hostfwd_lists_what_slirp4netns_can_express_only() -> None:
    assert hostfwd_json(Forward(1, "-t", parse_port_spec("80")), NS4, NS6)["host_addr"] == ""
    assert hostfwd_json(Forward(2, "-t", parse_port_spec("80-81")), NS4, NS6) is None
    assert hostfwd_json(Forward(3, "-T", parse_port_spec("80")), NS4, NS6) is None
    targeted = hostfwd_json(Forward(4, "-t", parse_port_spec("0.0.0.0/80:10.0.0.5/8080")),
                            NS4, NS6)
    assert (targeted["guest_addr"], targeted["guest_port"]) == ("10.0.0.5", 8080)


def test_native_list_entry() -> None:
    assert forward_json(Forward(7, "-U", parse_port_spec("53"))) == {
        "id": 7, "option": "-U", "proto": "udp", "direction": "ns-to-host", "spec": "53"}


def test_stats_json_shape() -> None:
    stats = Stats(uptime=1.23456, flows={"tcp": 1, "udp": 0, "icmp": 0}, frames_from_ns=2,
                  bytes_from_ns=100, frames_to_ns=3, bytes_to_ns=200,
                  drops={"unsupported": 1, "bad-header": 2}, forwards=1)
    assert stats.to_json() == {
        "uptime": 1.235, "flows": {"tcp": 1, "udp": 0, "icmp": 0},
        "from_ns": {"frames": 2, "bytes": 100}, "to_ns": {"frames": 3, "bytes": 200},
        "drops": {"bad-header": 2, "unsupported": 1}, "forwards": 1}


# ------------------------------------------------------------------ checks --
def test_overlap_with_an_existing_forward_is_refused_like_the_command_line() -> None:
    existing = [Forward(1, "-t", parse_port_spec("8000-8010"))]
    with pytest.raises(RequestError, match=r"Overlapping port specifier '8005' for -t: "
                       r"ports also forwarded by '-t 8000-8010' \(id 1\)"):
        check_new_forward("-t", parse_port_spec("8005"), existing)
    check_new_forward("-u", parse_port_spec("8005"), existing)  # another protocol
    check_new_forward("-t", parse_port_spec("8011"), existing)


def test_what_the_command_line_refuses() -> None:
    with pytest.raises(RequestError, match="forwards nothing"):
        check_new_forward("-t", parse_port_spec("none"), [])
    with pytest.raises(RequestError, match="Listening address not allowed for -T"):
        check_new_forward("-T", parse_port_spec("127.0.0.1/80"), [])


def test_what_only_a_live_instance_refuses() -> None:
    with pytest.raises(RequestError, match="'auto' forwarding is only available in pasta mode"):
        check_runtime_spec(parse_port_spec("auto"), auto=False)
    check_runtime_spec(parse_port_spec("auto"), auto=True)  # mirrors, binds no range
    with pytest.raises(RequestError, match=f"at most {MAX_RUNTIME_PORTS}"):
        check_runtime_spec(parse_port_spec("1000-9999"), auto=True)
    check_runtime_spec(parse_port_spec(f"1000-{999 + MAX_RUNTIME_PORTS}"), auto=True)
