"""A real qemu guest on passt mode: DHCP, ping, a download and a served file, end to end.

The guest is Debian's kernel (linux-image-amd64) with a busybox-static initramfs built
here: its /init loads virtio_net and its dependencies (modules in Debian's kernel), runs
udhcpc with udhcpc.script, pings the remote test host, fetches a file from its HTTP
server (busybox wget wrapped in ``timeout``: ``wget -T`` crashes here), and serves that
file with busybox httpd, which the remote then fetches through pasta-net's ``-t``
forward. Each step prints a marker on the serial console; the test waits for them.

qemu runs under TCG (KVM may hang here) inside the container netns, where it has no
network but the passt socket; everything the guest sends stays in the test topology.
About 20 s here (the issue saw 10 s), most of it the kernel booting without acceleration.
"""

from __future__ import annotations

import glob
import os
import re
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sandbox
import servers
from test_conformance import GUEST_TOOL, UDHCPC_SCRIPT

QEMU = "qemu-system-x86_64"
BUSYBOX = "/bin/busybox"
PACKAGES = "qemu-system-x86 linux-image-amd64 busybox-static"
GUEST_PORT = 18080
DOWNLOAD = 1 << 20
BOOT_TIMEOUT = 120.0
MODULES = ("kernel/drivers/virtio/virtio_pci.ko", "kernel/drivers/net/virtio_net.ko")
"""What the guest needs that Debian builds as modules; their dependencies come along."""

INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for module in $(cat /modules.order); do insmod /lib/modules/$module; done
ip link set lo up
ip link set eth0 up && echo MARK-LINK
udhcpc -i eth0 -f -q -n -t 10 -T 2 -s /udhcpc.script && echo MARK-DHCP
ping -c 1 -W 10 {sandbox.REMOTE_V4} && echo MARK-PING
mkdir -p /www
timeout 60 wget -q -O /www/file http://{sandbox.REMOTE_V4}:{servers.HTTP_PORT}/bytes/{DOWNLOAD}
echo MARK-FETCHED $(sha256sum /www/file)
httpd -p {GUEST_PORT} -h /www && echo MARK-SERVING
sleep 600
"""


def newc(entries: list[tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks: (name, mode, data) each."""
    out = bytearray()
    for ino, (name, mode, data) in enumerate([*entries, ("TRAILER!!!", 0, b"")], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % field for field in fields) + encoded
        out += bytes(-len(out) % 4)  # the name, then the data, start on 4-byte boundaries
        out += data
        out += bytes(-len(out) % 4)
    return bytes(out)


def module_order(release: str) -> list[str]:
    """MODULES and their dependencies from modules.dep, each after what it needs."""
    deps = {}
    for line in Path(f"/lib/modules/{release}/modules.dep").read_text().splitlines():
        module, _, needs = line.partition(":")
        deps[module] = needs.split()
    order: list[str] = []

    def visit(module: str) -> None:
        for needed in deps[module]:
            visit(needed)
        if module not in order:
            order.append(module)

    for module in MODULES:
        visit(module)
    return order


def build_initramfs(release: str, path: Path) -> None:
    order = module_order(release)
    directories = ["bin", "dev", "proc", "sys", "tmp", "lib", "lib/modules"]
    entries = [(name, 0o40755, b"") for name in directories]
    entries += [
        ("init", 0o100755, INIT.encode()),
        ("udhcpc.script", 0o100755, UDHCPC_SCRIPT.read_bytes()),
        ("bin/busybox", 0o100755, Path(BUSYBOX).read_bytes()),
        ("modules.order", 0o100644, "".join(f"{Path(m).name}\n" for m in order).encode()),
    ]
    entries += [(f"lib/modules/{Path(m).name}", 0o100644,
                 Path(f"/lib/modules/{release}/{m}").read_bytes()) for m in order]
    path.write_bytes(newc(entries))


def find_kernel() -> tuple[Path, str]:
    """The newest /boot/vmlinuz-* whose modules are installed, and its release."""
    for vmlinuz in sorted(glob.glob("/boot/vmlinuz-*"), reverse=True):
        release = vmlinuz.removeprefix("/boot/vmlinuz-")
        if Path(f"/lib/modules/{release}/modules.dep").exists():
            return Path(vmlinuz), release
    pytest.fail(f"no kernel with modules in /boot: install {PACKAGES}")


class Console:
    """The guest's serial console (qemu's stdout), read line by line against a deadline."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        self.stream = process.stdout
        self.lines: list[str] = []
        self._pending = b""

    def wait_for(self, marker: str, deadline: float) -> str:
        """The first line (from the start) containing ``marker``; fails on timeout.

        Containing, not starting with: the firmware's escape sequences may precede it."""
        while True:
            for line in self.lines:
                if marker in line:
                    return line
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.stream], [], [], left)[0]:
                break
            data = os.read(self.stream.fileno(), 65536)
            if not data:
                break
            *complete, self._pending = (self._pending + data).split(b"\n")
            self.lines += [line.decode(errors="replace").strip() for line in complete]
        tail = "\n".join(self.lines[-40:])
        pytest.fail(f"no {marker} on the guest console; last lines:\n{tail}")


@pytest.fixture
def initramfs(tmp_path: Path) -> tuple[Path, Path]:
    missing = [tool for tool in (QEMU, BUSYBOX) if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: install {PACKAGES}")
    vmlinuz, release = find_kernel()
    path = tmp_path / "initramfs.cpio"
    build_initramfs(release, path)
    return vmlinuz, path


def test_qemu_guest_over_passt(topology: sandbox.Topology, container: sandbox.Container,
                               initramfs: tuple[Path, Path], tmp_path: Path) -> None:
    vmlinuz, initrd = initramfs
    sock = tmp_path / "passt.socket"
    command = [*sandbox.program_command(), "--passt"]
    with sandbox.ProgramRunner(command, tmp_path, container) as runner:
        runner.start(["-1", "-s", str(sock), "-t", str(GUEST_PORT)], attach=None)
        qemu = container.popen([
            QEMU, "-accel", "tcg", "-m", "256", "-nographic", "-no-reboot",
            "-kernel", str(vmlinuz), "-initrd", str(initrd),
            "-append", "console=ttyS0 panic=-1 quiet",
            "-netdev", f"stream,id=n,server=off,addr.type=unix,addr.path={sock}",
            "-device", "virtio-net-pci,netdev=n",
        ], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        console = Console(qemu)
        deadline = time.monotonic() + BOOT_TIMEOUT
        for marker in ("MARK-LINK", "MARK-DHCP", "MARK-PING"):
            console.wait_for(marker, deadline)
        lease = console.wait_for("lease ip=", deadline)
        assert f"ip={sandbox.HOST_V4}" in lease and f"router={sandbox.GATEWAY_V4}" in lease
        fetched = console.wait_for("MARK-FETCHED", deadline)
        assert re.search(rf"\b{servers.pattern_sha256(DOWNLOAD)}\b", fetched), fetched
        console.wait_for("MARK-SERVING", deadline)
        served = topology.remote.run([sys.executable, str(GUEST_TOOL), "http-get",
                                      sandbox.HOST_V4, str(GUEST_PORT), "/file"], timeout=60)
        assert served.stdout.decode().strip() == f"{servers.pattern_sha256(DOWNLOAD)} {DOWNLOAD}"
