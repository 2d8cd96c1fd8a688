"""The namespace side of the engine: a tap device, read and written in batches.

The tap is opened with ``IFF_VNET_HDR``: every read starts with a 12-byte virtio-net
header (checksum and segmentation hints from the namespace's kernel, which we do not
need: we never verify checksums of frames we translate into socket calls), and every
write starts with one too, which the core has filled (``NEEDS_CSUM``, GSO) or left zero.

Reads go into preallocated buffers until ``EAGAIN`` or the batch is full, so one wake-up
handles a burst with one engine call. Writes are one ``write`` per frame: the tap takes
exactly one frame per call.

:class:`FrameDevice` is what the hub needs of a backend; passt mode's
:class:`~pasta_net.shell.qemu.QemuStream` offers the same, so the hub never asks which
one it drives.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Sequence
from typing import Protocol

from pasta_net.core.frames import VNET_HDR_LEN

__all__ = ["FrameDevice", "TapDevice"]

_BUFFER_SIZE = 65536 + VNET_HDR_LEN
BATCH = 32


class FrameDevice(Protocol):
    """Where the engine's frames come from and go to: the tap, or a qemu socket."""

    fd: int
    """Readable when :meth:`read_batch` has something to do."""

    def read_batch(self) -> list[memoryview]:
        """Frames that arrived (without virtio-net header), valid until the next call."""
        ...

    def write_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send frames, each starting with the virtio-net header slot."""
        ...

    def close(self) -> None: ...


class TapDevice:
    def __init__(self, fd: int) -> None:
        self.fd = fd
        os.set_blocking(fd, False)
        # One anonymous mapping: pages become resident only once a frame that long has
        # been read into them, so an idle daemon does not carry 2 MiB of zeroes.
        self._region = mmap.mmap(-1, _BUFFER_SIZE * BATCH)
        region = memoryview(self._region)
        self._views = [region[i * _BUFFER_SIZE : (i + 1) * _BUFFER_SIZE] for i in range(BATCH)]
        self._buffers = self._views
        self.write_drops = 0

    def read_batch(self) -> list[memoryview]:
        """Frames waiting on the tap (without their virtio-net header), maybe none."""
        frames = []
        fd = self.fd
        for buf, view in zip(self._buffers, self._views, strict=True):
            try:
                n = os.readv(fd, [buf])
            except BlockingIOError:
                break
            if n > VNET_HDR_LEN:
                frames.append(view[VNET_HDR_LEN:n])
        return frames

    def write_batch(self, frames: Sequence[bytes | bytearray | memoryview]) -> None:
        """Write frames (virtio-net header included); what the tap refuses is counted."""
        fd = self.fd
        for frame in frames:
            try:
                os.write(fd, frame)
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.ENOBUFS, errno.EIO):
                    raise
                self.write_drops += 1

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
