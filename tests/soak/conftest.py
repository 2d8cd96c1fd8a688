"""The soak runs in the integration tests' sandbox topology, with their fixtures."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from tests.integration.conftest import (  # noqa: F401 - fixtures, used by name
    _no_stray_processes,
    container,
    pasta_net,
    pasta_net_cmd,
    topology,
)
