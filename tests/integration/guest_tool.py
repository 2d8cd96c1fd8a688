"""Clients and one-shot servers that conformance tests run inside a guest or the remote.

    nsenter --net=FILE python3 guest_tool.py COMMAND ARGS...

Each command prints one result line that the test compares (hashes from servers.py's
test pattern, so both ends agree on the bytes without shipping files):

    arp IFNAME SENDER_IP TARGET_IP   "<target mac> <target ip>" of the ARP reply
    sink HOST PORT SIZE              send pattern(SIZE) to servers.py's sink; its answer
    fetch HOST PORT [SIZE]           "<sha256> <count>" of what arrives until EOF
    http-get HOST PORT PATH          "<sha256> <count>" of the body of an HTTP/1.0 GET
    udp HOST PORT SIZE               "echoed <count>" once the same datagram came back
    serve-tcp PORT SIZE              "listening", then send pattern(SIZE) to one client
    serve-udp PORT                   "listening", then echo one datagram
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
import sys

import servers

TIMEOUT = 20.0
ETH_P_ARP = 0x0806
_ARP = struct.Struct("!HHBBH6s4s6s4s")


def family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def arp(ifname: str, sender_ip: str, target_ip: str) -> str:
    """One ARP request on a packet socket; the first reply from ``target_ip``."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)) as sock:
        sock.bind((ifname, ETH_P_ARP))
        sock.settimeout(TIMEOUT)
        mac = sock.getsockname()[4]
        target = socket.inet_aton(target_ip)
        request = _ARP.pack(1, 0x0800, 6, 4, 1, mac, socket.inet_aton(sender_ip), bytes(6), target)
        sock.send(b"\xff" * 6 + mac + struct.pack("!H", ETH_P_ARP) + request)
        while True:
            frame = sock.recv(2048)
            fields = _ARP.unpack_from(frame, 14)
            if fields[4] == 2 and fields[6] == target:
                return f"{fields[5].hex(':')} {socket.inet_ntoa(fields[6])}"


def receive_all(sock: socket.socket) -> str:
    digest, count = hashlib.sha256(), 0
    while data := sock.recv(servers.CHUNK):
        digest.update(data)
        count += len(data)
    return f"{digest.hexdigest()} {count}"


def sink(host: str, port: str, size: str) -> str:
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        for chunk in servers.pattern_chunks(int(size)):
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        return sock.makefile().readline().strip()


def fetch(host: str, port: str, size: str | None = None) -> str:
    """Read until EOF; with SIZE, ask servers.py's source for that many bytes first."""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        if size is not None:
            sock.sendall(f"{size}\n".encode())
        return receive_all(sock)


def http_get(host: str, port: str, path: str) -> str:
    """Fetch with HTTP/1.0 (the answer ends at EOF); the body's hash and length."""
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
        response = sock.makefile("rb")
        status = response.readline()
        if b" 200 " not in status:
            return f"HTTP status {status.decode(errors='replace').strip()}"
        while response.readline().strip():
            pass  # headers
        body = response.read()
    return f"{hashlib.sha256(body).hexdigest()} {len(body)}"


def udp(host: str, port: str, size: str) -> str:
    payload = os.urandom(int(size))
    with socket.socket(family(host), socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.connect((host, int(port)))
        sock.send(payload)
        while sock.recv(65536) != payload:
            pass
    return f"echoed {len(payload)}"


def listening(kind: socket.SocketKind, port: str) -> socket.socket:
    """Bound on every address of the guest; says so on stdout for the test to wait on."""
    sock = socket.socket(socket.AF_INET6, kind)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.settimeout(TIMEOUT)
    sock.bind(("::", int(port)))
    if kind == socket.SOCK_STREAM:
        sock.listen(1)
    print("listening", flush=True)
    return sock


def serve_tcp(port: str, size: str) -> str:
    with listening(socket.SOCK_STREAM, port) as server:
        conn, _ = server.accept()
        with conn:
            for chunk in servers.pattern_chunks(int(size)):
                conn.sendall(chunk)
    return "served"


def serve_udp(port: str) -> str:
    with listening(socket.SOCK_DGRAM, port) as server:
        data, peer = server.recvfrom(65536)
        server.sendto(data, peer)
    return "served"


COMMANDS = {"arp": arp, "sink": sink, "fetch": fetch, "http-get": http_get, "udp": udp,
            "serve-tcp": serve_tcp, "serve-udp": serve_udp}


if __name__ == "__main__":
    print(COMMANDS[sys.argv[1]](*sys.argv[2:]), flush=True)
