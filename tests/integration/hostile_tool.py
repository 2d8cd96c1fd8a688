"""A hostile (or just demanding) process inside the container, for test_hostile.py and
test_exhaustion.py. Raw frames go out through an AF_PACKET socket on the tap interface,
which the namespace's root may open (CAP_NET_RAW over its netns).

Each command prints one line of JSON (after "ready" lines where it waits for the test):

    hostile_tool.py send IFNAME                   # frames on stdin, 4-byte length before each
    hostile_tool.py live-abuse IFNAME HOST PORT SIZE
        # upload SIZE bytes to the sink; halfway, inject absurd segments into the live
        # connection (learned by sniffing its own frames), then finish and compare hashes
    hostile_tool.py paused-upload HOST PORT SIZE  # half, "paused", wait for a stdin line, rest
    hostile_tool.py paused-download HOST PORT SIZE  # the same, receiving from the source
    hostile_tool.py hold-many HOST PORT COUNT     # COUNT connections held until stdin closes
    hostile_tool.py udp-ask HOST PORT             # one datagram on a new flow: reply or error
"""

from __future__ import annotations

import hashlib
import json
import socket
import struct
import subprocess
import sys
import time

from servers import pattern_chunks, pattern_sha256

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
_LENGTH = struct.Struct("!I")


def _emit(**fields: object) -> None:
    print(json.dumps(fields), flush=True)


def _packet_socket(ifname: str) -> socket.socket:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.bind((ifname, 0))
    return sock


def _tap_dropped(ifname: str) -> int:
    """Frames the tap's queue dropped so far (pasta-net did not read them in time)."""
    out = subprocess.run(["ip", "-s", "-j", "link", "show", ifname], capture_output=True,
                         check=True).stdout
    return json.loads(out)[0]["stats64"]["tx"]["dropped"]


def send(ifname: str) -> dict:
    """Send the frames, paced to about 10,000 a second: a storm, but one whose every
    frame reaches pasta-net, so the tests can count drops exactly (``tap_dropped`` says
    how many the tap's queue lost anyway)."""
    data = sys.stdin.buffer.read()
    sock = _packet_socket(ifname)
    dropped = _tap_dropped(ifname)
    sent = errors = pos = 0
    while pos < len(data):
        (length,) = _LENGTH.unpack_from(data, pos)
        frame = data[pos + 4 : pos + 4 + length]
        pos += 4 + length
        try:
            sock.send(frame)
            sent += 1
        except OSError:
            errors += 1  # e.g. a frame the kernel's own checks refuse
        if sent % 200 == 0:
            time.sleep(0.02)
    time.sleep(0.1)
    return {"sent": sent, "errors": errors, "tap_dropped": _tap_dropped(ifname) - dropped}


# ------------------------------------------------------------------ live abuse --
def _last_segment(sniffer: socket.socket, local: tuple, remote: tuple) -> tuple[bytes, dict]:
    """The newest frame our kernel sent on this connection: its headers tell us the
    MACs, the next sequence number and what it acknowledges."""
    sport, dport = local[1], remote[1]
    found = None
    sniffer.settimeout(0.3)
    while True:
        try:
            frame, address = sniffer.recvfrom(65600)
        except TimeoutError:
            break
        if address[2] != PACKET_OUTGOING or frame[12:14] != b"\x08\x00":
            continue
        ihl = (frame[14] & 0x0F) * 4
        total = struct.unpack_from("!H", frame, 16)[0]
        tcp = 14 + ihl
        if frame[23] != 6 or struct.unpack_from("!HH", frame, tcp) != (sport, dport):
            continue
        seq, ack = struct.unpack_from("!II", frame, tcp + 4)
        offset = (frame[tcp + 12] >> 4) * 4
        found = frame, {"seq": seq + total - ihl - offset, "ack": ack}
    if found is None:
        raise RuntimeError("no frame of the connection seen")
    return found


def _segment(template: bytes, seq: int, ack: int, flags: int, window: int,
             options: bytes = b"", payload: bytes = b"") -> bytes:
    """A frame of the same connection as ``template`` (Ethernet, IPv4, TCP), checksums
    zero: pasta-net does not verify them (the tap may hand over partial ones)."""
    options += b"\0" * (-len(options) % 4)
    tcp = struct.pack("!HHIIBBHHH", *struct.unpack_from("!HH", template, 34),
                      seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, (20 + len(options)) << 2, flags,
                      window, 0, 0) + options + payload
    ip = bytearray(template[14:34])
    struct.pack_into("!HH", ip, 2, 20 + len(tcp), 0)
    struct.pack_into("!H", ip, 10, 0)
    return template[:14] + bytes(ip) + tcp


def live_abuse(ifname: str, host: str, port: int, size: int) -> dict:
    sniffer = _packet_socket(ifname)
    sock = socket.create_connection((host, port), timeout=30)
    chunks = list(pattern_chunks(size))
    half = len(chunks) // 2
    for chunk in chunks[:half]:
        sock.sendall(chunk)
    time.sleep(0.3)
    template, numbers = _last_segment(sniffer, sock.getsockname(), sock.getpeername())
    seq, ack = numbers["seq"], numbers["ack"]
    injector = _packet_socket(ifname)
    abuse = [
        ("reset far before", seq - (1 << 31), ack, 0x04, 0),
        ("reset far after", seq + (1 << 30), ack, 0x14, 0),
        ("ack of data never sent", seq, ack + (1 << 20), 0x10, 65535),
        ("ack far behind", seq, ack - (1 << 30), 0x10, 0),
        ("syn in the connection", seq + 12345, 0, 0x02, 65535),
        ("data far ahead", seq + (1 << 24), ack, 0x18, 65535),
        ("data long behind", seq - (1 << 24), ack, 0x18, 65535),
        ("fin far ahead", seq + 100_000, ack, 0x11, 65535),
        ("every flag", seq + (1 << 29), ack, 0xFF, 0),
        ("urgent, no flags", seq + (1 << 29), ack, 0x20, 7),
    ]
    for _name, s, a, flags, window in abuse:
        payload = b"x" * 1000 if flags & 0x08 else b""
        injector.send(_segment(template, s, a, flags, window, payload=payload))
    options = [b"\x02\x04\x00\x01", b"\x03\x03\xff", b"\x01" * 40, b"\xfe\x02",
               b"\x08\x0a" + bytes(8)]
    for option in options:  # absurd options on a plain ACK: nothing to act on
        injector.send(_segment(template, seq, ack, 0x10, 65535, option[:40]))
    digest, count = _finish_upload(sock, chunks[half:])
    return {"injected": len(abuse) + len(options), "sent_sha": pattern_sha256(size),
            "peer_sha": digest, "peer_got": count}


# ------------------------------------------------------------- exhaustion ---
def paused_upload(host: str, port: int, size: int) -> dict:
    sock = socket.create_connection((host, port), timeout=60)
    chunks = list(pattern_chunks(size))
    half = len(chunks) // 2
    for chunk in chunks[:half]:
        sock.sendall(chunk)
    _emit(paused=True)
    sys.stdin.readline()
    digest, count = _finish_upload(sock, chunks[half:])
    return {"sent_sha": pattern_sha256(size), "peer_sha": digest, "peer_got": count}


def _finish_upload(sock: socket.socket, rest: list[bytes]) -> tuple[str, int]:
    """Send the rest, half-close, and read the sink's answer: its SHA-256 and byte count."""
    for chunk in rest:
        sock.sendall(chunk)
    sock.shutdown(socket.SHUT_WR)
    reply = b""
    while part := sock.recv(4096):
        reply += part
    digest, count = reply.decode().split()
    return digest, int(count)


def paused_download(host: str, port: int, size: int) -> dict:
    sock = socket.create_connection((host, port), timeout=60)
    sock.sendall(f"{size}\n".encode())
    digest, got = hashlib.sha256(), 0
    paused = False
    while chunk := sock.recv(1 << 16):
        digest.update(chunk)
        got += len(chunk)
        if not paused and got >= size // 2:
            paused = True
            _emit(paused=True)
            sys.stdin.readline()
    return {"expected_sha": pattern_sha256(size), "got_sha": digest.hexdigest(), "got": got}


def hold_many(host: str, port: int, count: int) -> dict:
    held, outcomes = [], {"connected": 0, "refused": 0, "reset": 0, "timeout": 0, "other": 0}
    slowest = 0.0
    for _ in range(count):
        started = time.monotonic()
        try:
            sock = socket.create_connection((host, port), timeout=5)
            sock.sendall(b"x")
            held.append(sock)
            outcomes["connected"] += 1
        except ConnectionRefusedError:
            outcomes["refused"] += 1
        except ConnectionResetError:
            outcomes["reset"] += 1
        except TimeoutError:
            outcomes["timeout"] += 1
        except OSError:
            outcomes["other"] += 1
        slowest = max(slowest, time.monotonic() - started)
    _emit(**outcomes, slowest=round(slowest, 3))
    sys.stdin.read()  # hold them until the test is done
    alive = 0
    for sock in held:
        try:
            sock.sendall(b"y")
            alive += 1
        except OSError:
            pass
        sock.close()
    return {"alive_at_end": alive}


def udp_ask(host: str, port: int) -> dict:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.connect((host, port))
        started = time.monotonic()
        try:
            sock.send(b"hello")
            reply = sock.recv(100).decode()
            return {"reply": reply, "seconds": time.monotonic() - started}
        except OSError as exc:
            return {"error": type(exc).__name__, "errno": exc.errno,
                    "seconds": round(time.monotonic() - started, 3)}


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "send":
        result = send(args[0])
    elif command == "live-abuse":
        result = live_abuse(args[0], args[1], int(args[2]), int(args[3]))
    elif command == "paused-upload":
        result = paused_upload(args[0], int(args[1]), int(args[2]))
    elif command == "paused-download":
        result = paused_download(args[0], int(args[1]), int(args[2]))
    elif command == "hold-many":
        result = hold_many(args[0], int(args[1]), int(args[2]))
    elif command == "udp-ask":
        result = udp_ask(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown command {command}")
    _emit(**result)


if __name__ == "__main__":
    main(sys.argv[1:])
