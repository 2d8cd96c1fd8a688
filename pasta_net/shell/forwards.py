"""The port forwards of a running instance: those of the command line, and those the
control sockets add and remove while it runs.

Each forward is one -t/-u/-T/-U argument (a :class:`~pasta_net.core.portspec.PortSpec`)
with an id. The table does not know how a forward is set up: it asks the *binder*
registered for the option, a function that binds a spec and returns the function that
undoes it: shell/forwarding.py's ``Forwarding.bind``, for all four options (splice,
``auto`` and -T/-U included). An option without a binder (``--no-tcp``, -T/-U in passt
mode) is refused with a reason.

Removing a forward closes its listeners only: connections it already accepted keep
running, as when pasta drops a forwarding rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from pasta_net.core.control import Forward, RequestError, check_new_forward
from pasta_net.core.portspec import PortSpec

__all__ = ["Binder", "ForwardTable"]

Binder = Callable[[PortSpec], Callable[[], None]]
"""Sets up a spec's forwarding (raising on failure); returns what tears it down."""


class ForwardTable:
    """Forwards by id, in the order they were added."""

    def __init__(self) -> None:
        self._binders: dict[str, Binder] = {}
        self._forwards: dict[int, tuple[Forward, Callable[[], None]]] = {}
        self._next_id = 1

    def register(self, option: str, binder: Binder) -> None:
        """Make ``option`` (``-t``, ``-u``, ``-T``, ``-U``) available."""
        self._binders[option] = binder

    def add(self, option: str, spec: PortSpec) -> Forward:
        """Bind ``spec`` for ``option``; raises :class:`RequestError` if it cannot be
        accepted, or the binder's own error (``ListenError``) if binding fails."""
        binder = self._binders.get(option)
        if binder is None:  # --no-tcp/--no-udp, or -T/-U in passt mode
            raise RequestError(f"{option} forwards are not available in this instance")
        check_new_forward(option, spec, self)
        unbind = binder(spec)
        forward = Forward(self._next_id, option, spec)
        self._next_id += 1
        self._forwards[forward.id] = (forward, unbind)
        return forward

    def remove(self, fid: int) -> Forward:
        entry = self._forwards.pop(fid, None)
        if entry is None:
            raise RequestError(f"no forward with id {fid}")
        forward, unbind = entry
        unbind()
        return forward

    def __iter__(self) -> Iterator[Forward]:
        return (forward for forward, _unbind in self._forwards.values())

    def __len__(self) -> int:
        return len(self._forwards)
