"""By hand, as real root (uid 0 outside any user namespace): pasta-net gives root up.

pytest runs inside a user namespace (tests/conftest.py), where no process is ever real
root, so this check cannot be a test there. Run it as root on a scratch machine::

    sudo python tests/manual/real_root.py

It re-executes itself in a private network and mount namespace (the machine's own
interfaces are never touched), gives that "host" a veth uplink with an address and a
default route, creates a container netns bound to a file, and starts pasta-net against
it as root with ``-t 80``, a pcap file and a control socket in a directory only root may
write. Then it checks the daemon: every thread runs as nobody (65534) with no capability
left but CAP_NET_BIND_SERVICE, ``NoNewPrivs`` is set, stdio is on /dev/null, port 80,
the pcap file and the control socket exist, the container got its address, and traffic
still flows after the switch (ICMP echo to the gateway, which pasta-net answers through
a ping socket on the private host's loopback). One line of JSON; exit status 0 when
every check holds.

The interpreter must be readable by ``nobody`` if anything is imported after the switch
(pyenv under /root is not): a failed check names the module that could not be loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_INNER = "PASTA_NET_REAL_ROOT_INNER"
NET_BIND_SERVICE = f"{1 << 10:016x}"
"""The one capability kept: forwarded low ports are bound after the switch."""


def _run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _status(pid: int) -> dict[str, dict[str, str]]:
    """``/proc/PID/task/*/status`` as {tid: {field: value}}."""
    tasks = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        fields = dict(line.split(":\t", 1) for line in (task / "status").read_text()
                      .splitlines() if ":\t" in line)
        tasks[task.name] = fields
    return tasks


def inner() -> dict[str, object]:
    _run("ip", "link", "set", "lo", "up")
    _run("ip", "link", "add", "up0", "type", "veth", "peer", "name", "up0peer")
    _run("ip", "addr", "add", "198.51.100.2/24", "dev", "up0")
    _run("ip", "link", "set", "up0peer", "up")
    _run("ip", "link", "set", "up0", "up")
    _run("ip", "route", "add", "default", "via", "198.51.100.1")
    Path("/proc/sys/net/ipv4/ping_group_range").write_text("0 2147483647")
    scratch = Path(tempfile.mkdtemp(prefix="pasta-net-real-root-"))
    os.chmod(scratch, 0o755)
    netns = scratch / "container"
    netns.touch()
    _run("unshare", f"--net={netns}", "true")
    pidfile, log = scratch / "pid", scratch / "log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        code = subprocess.run(
            [sys.executable, "-m", "pasta_net", "--config-net", "-P", str(pidfile),
             "--netns", str(netns), "-t", "80", "-u", "none", "-T", "none", "-U", "none",
             "--pcap", str(scratch / "pcap"), "-c", str(scratch / "control")],
            stdout=out, stderr=out, env=env, check=False, timeout=30).returncode
    result: dict[str, object] = {"started": code == 0, "log": log.read_text()}
    if code != 0:
        return result
    pid = int(pidfile.read_text())
    try:
        time.sleep(0.5)
        tasks = _status(pid)
        result["uids"] = sorted({t["Uid"] for t in tasks.values()})
        result["cap_eff"] = sorted({t["CapEff"] for t in tasks.values()})
        result["cap_prm"] = sorted({t["CapPrm"] for t in tasks.values()})
        result["no_new_privs"] = sorted({t["NoNewPrivs"] for t in tasks.values()})
        result["stdio"] = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)]
        nsenter = shutil.which("nsenter", path=os.defpath) or "/usr/bin/nsenter"
        result["address"] = "198.51.100.2/24" in _run(nsenter, f"--net={netns}", "ip", "addr")
        ping = subprocess.run([nsenter, f"--net={netns}", "ping", "-c", "1", "-W", "5",
                               "198.51.100.1"], capture_output=True, check=False)
        result["ping"] = ping.returncode == 0
        result["alive"] = Path(f"/proc/{pid}").exists()
        result["port_80"] = ":80 " in _run("ss", "-Hlnt")
        result["control"] = (scratch / "control").is_socket()
        result["pcap"] = (scratch / "pcap").stat().st_size > 0
    finally:
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.5)
    result["log"] = log.read_text()
    result["ok"] = (result["uids"] == ["65534\t65534\t65534\t65534"]
                    and result["cap_eff"] == [NET_BIND_SERVICE]
                    and result["cap_prm"] == [NET_BIND_SERVICE]
                    and result["port_80"] and result["control"] and result["pcap"]
                    and result["no_new_privs"] == ["1"]
                    and result["stdio"] == ["/dev/null"] * 3
                    and result["address"] and result["ping"] and result["alive"])
    return result


def main() -> int:
    if os.environ.get(_INNER):
        result = inner()
        print(json.dumps(result))
        return 0 if result.get("ok") else 1
    if os.geteuid() != 0 or Path("/proc/self/uid_map").read_text().split() != [
            "0", "0", "4294967295"]:
        print("run me as real root (uid 0 outside any user namespace)", file=sys.stderr)
        return 2
    return subprocess.run(["unshare", "--net", "--mount", "--propagation", "private",
                           sys.executable, __file__], env={**os.environ, _INNER: "1"},
                          check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
