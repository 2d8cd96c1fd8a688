"""One file descriptor held in reserve, for refusing connections when we run out.

Why: when ``accept`` fails with ``EMFILE`` (or ``ENFILE``), the connection stays in the
listener's backlog and the listener stays readable. Under level-triggered epoll the hub
would then spin on it, and the client would wait for its own timeout. With one fd kept
aside we can close it, accept the connection, reset it at once (the client sees
``ECONNRESET`` now), and take the fd back: new connections are refused, the ones we
already serve go on (DESIGN.md §6). The same trick as libev's and nginx's.
"""

from __future__ import annotations

import logging
import os
import socket
import struct

__all__ = ["SpareFd"]

log = logging.getLogger("pasta_net.reserve")

_LINGER_RESET = struct.pack("ii", 1, 0)


class SpareFd:
    """An fd on /dev/null, given up for the time it takes to refuse one connection."""

    def __init__(self) -> None:
        self._fd = self._open()

    @staticmethod
    def _open() -> int:
        try:
            return os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return -1

    def refuse(self, listener: socket.socket) -> bool:
        """Accept one pending connection of ``listener`` on the spare fd and reset it.

        Returns False when nothing could be accepted (nothing pending, or not even the
        spare fd helped): the caller stops accepting until the next readiness.
        """
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        try:
            conn, _address = listener.accept()
        except OSError:
            return False
        else:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            conn.close()
            log.debug("refused a connection on %s: out of file descriptors",
                      listener.getsockname())
            return True
        finally:
            self._fd = self._open()  # the accepted fd is closed by now, if there was one

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
