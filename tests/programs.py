"""Executables for tests that must run pasta-net the way its users do: as a program.

podman runs ``pasta`` (a file of that name in ``helper_binaries_dir``) and OCI runtimes run
the hook by absolute path. These launchers run this checkout with this interpreter, so
the tests need no installed console scripts, and argv[0] is whatever name the test chose.
"""

from __future__ import annotations

import sys
from pathlib import Path

__all__ = ["REPO", "hook_program", "pasta_symlink"]

REPO = Path(__file__).resolve().parent.parent

_LAUNCHER = """\
#!{python}
import sys
sys.path.insert(0, {repo!r})
from {module} import main
raise SystemExit(main())
"""


def _launcher(path: Path, module: str) -> Path:
    path.write_text(_LAUNCHER.format(python=sys.executable, repo=str(REPO), module=module))
    path.chmod(0o755)
    return path


def pasta_symlink(directory: Path) -> Path:
    """``directory/pasta`` → ``directory/pasta-net``, the way contrib/podman installs it."""
    target = _launcher(directory / "pasta-net", "pasta_net.cli")
    link = directory / "pasta"
    link.symlink_to(target.name)
    return link


def hook_program(directory: Path) -> Path:
    """``directory/pasta-net-oci-hook``, as the console script of that name."""
    return _launcher(directory / "pasta-net-oci-hook", "pasta_net.oci_hook")
