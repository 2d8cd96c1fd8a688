"""The files users install: podman's installer and drop-in, the hooks.d definitions, and
the OCI config fragment. Each must be what its reader (podman, a runtime) accepts."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pasta_net import oci_hook
from pasta_net.oci_hook import State
from tests.programs import REPO, pasta_symlink

INSTALL = REPO / "contrib" / "podman" / "install.sh"
HOOKS = sorted((REPO / "hooks").glob("*.json"))
FRAGMENT = REPO / "contrib" / "oci" / "config-fragment.json"
PODMAN_DEFAULT_DIRS = [
    "/usr/local/libexec/podman",
    "/usr/local/lib/podman",
    "/usr/libexec/podman",
    "/usr/lib/podman",
]


def install(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    return subprocess.run(
        ["sh", str(INSTALL), *args], env=env, capture_output=True, text=True, check=False
    )


@pytest.fixture
def pasta_net(tmp_path: Path) -> Path:
    """An executable pasta-net, as ``pip install`` would put on PATH."""
    return pasta_symlink(tmp_path).with_name("pasta-net")


def test_install_for_one_user(tmp_path: Path, pasta_net: Path) -> None:
    result = install(tmp_path, str(pasta_net))
    assert result.returncode == 0, result.stderr
    link = tmp_path / ".local/libexec/pasta-net/pasta"
    assert link.resolve() == pasta_net.resolve()
    assert result.stdout.splitlines()[-1].startswith("pasta ")  # its --version, as "pasta"
    conf = tmp_path / ".config/containers/containers.conf.d/50-pasta-net.conf"
    config = tomllib.loads(conf.read_text())
    dirs = config["engine"]["helper_binaries_dir"]
    assert dirs == [str(link.parent), *PODMAN_DEFAULT_DIRS]  # podman's own list kept
    assert config["network"]["default_rootless_network_cmd"] == "pasta"

    assert install(tmp_path, "--uninstall").returncode == 0
    assert not link.is_symlink()
    assert not conf.exists()


def test_install_never_replaces_a_real_pasta(tmp_path: Path, pasta_net: Path) -> None:
    real = tmp_path / ".local/libexec/pasta-net/pasta"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\n")
    result = install(tmp_path, str(pasta_net))
    assert result.returncode == 1
    assert "exists and is not a symlink" in result.stderr
    assert real.read_text() == "#!/bin/sh\n"


def test_install_needs_pasta_net(tmp_path: Path) -> None:
    result = install(tmp_path, str(tmp_path / "nowhere" / "pasta-net"))
    assert result.returncode == 1
    assert "is not executable" in result.stderr


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_hooks_d_definitions() -> None:
    """containers-common oci-hooks(5), schema 1.0.0: one per stage, gated the same way."""
    hooks = {path.name: load(path) for path in HOOKS}
    assert sorted(stage for h in hooks.values() for stage in h["stages"]) == [
        "createRuntime",
        "prestart",
    ]
    for hook in hooks.values():
        assert hook["version"] == "1.0.0"
        assert set(hook) == {"version", "hook", "when", "stages"}
        assert Path(hook["hook"]["path"]).is_absolute()
        assert Path(hook["hook"]["path"]).name == "pasta-net-oci-hook"
        assert hook["hook"]["timeout"] > 0
        ((key, value),) = hook["when"]["annotations"].items()
        assert re.search(key, "io.pasta-net.enable") and re.search(value, "true")
        assert not re.search(key, "io.pasta-net.enabled")
        assert not re.search(value, "false")


def test_oci_fragment_matches_the_hook() -> None:
    fragment = load(FRAGMENT)
    (hook,) = fragment["hooks"]["createRuntime"]
    assert hook["path"] == load(HOOKS[0])["hook"]["path"]
    assert fragment["annotations"]["io.pasta-net.enable"] == "true"
    (network,) = fragment["linux"]["namespaces"]
    state = State(pid=1, bundle="/b", annotations=fragment["annotations"])
    options = oci_hook.build_options(state, ["--netns", network["path"]])
    assert options.ns.config_net
