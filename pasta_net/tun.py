"""Create the namespace's tap device, with the kernel doing checksums and segmentation.

Facts this module relies on:

- A tun/tap device is created in the network namespace of the thread that *opens*
  ``/dev/net/tun`` (the file remembers it), so :func:`open_tap` must run while the
  calling thread is inside the target namespace. ``TUNSETIFF`` needs ``CAP_NET_ADMIN``
  over that namespace, which a user-namespace root has.
- Without ``IFF_TUN_PERSIST`` the device lives exactly as long as the fd: closing it (or
  exiting) removes the interface and its addresses and routes.
- ``IFF_VNET_HDR`` puts a ``struct virtio_net_hdr`` before every frame. With
  ``TUNSETVNETHDRSZ 12`` it is the ``virtio_net_hdr_mrg_rxbuf`` layout (flags,
  gso_type, hdr_len, gso_size, csum_start, csum_offset, num_buffers).
- ``TUNSETOFFLOAD`` (``TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6``) tells the kernel we
  accept partial checksums and TSO super-frames, so frames from the namespace arrive
  with ``VIRTIO_NET_HDR_F_NEEDS_CSUM`` (only the pseudo-header summed) and can be up to
  64 KiB whatever the MTU. It works inside an unprivileged user namespace; if a kernel
  refuses it the tap still works with software checksums (``offload`` False).
"""

from __future__ import annotations

import os
import socket

import attrs

from pasta_net import linux

__all__ = ["VNET_HDR_LEN", "Tap", "TunError", "open_tap"]

VNET_HDR_LEN = 12
"""Length of the virtio-net header before each frame when ``vnet_hdr`` is on."""

_TUN_PATH = "/dev/net/tun"
_OFFLOADS = linux.TUN_F_CSUM | linux.TUN_F_TSO4 | linux.TUN_F_TSO6


class TunError(Exception):
    """The tap device could not be created; the message is ready for the user."""


@attrs.frozen
class Tap:
    fd: int
    """Non-blocking, close-on-exec fd: one ``read``/``write`` per frame."""
    name: str
    ifindex: int
    """Index in the target namespace (where :func:`open_tap` ran)."""
    vnet_hdr: bool
    """Each frame is preceded by a :data:`VNET_HDR_LEN`-byte virtio-net header."""
    offload: bool
    """The kernel hands us partial checksums and TSO super-frames (``TUNSETOFFLOAD``)."""


def open_tap(name: str, vnet_hdr: bool = True) -> Tap:
    """Create tap ``name`` in the calling thread's network namespace and return its fd."""
    try:
        fd = os.open(_TUN_PATH, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise TunError(f"Failed to open {_TUN_PATH}: {exc.strerror}") from exc
    try:
        flags = linux.IFF_TAP | linux.IFF_NO_PI | (linux.IFF_VNET_HDR if vnet_hdr else 0)
        try:
            name = linux.ioctl_ifreq(fd, linux.TUNSETIFF, name, flags)
        except OSError as exc:
            raise TunError(f"Failed to set up tap device {name}: {exc.strerror}") from exc
        if vnet_hdr:
            _set_vnet_hdr_len(fd, name)
        offload = vnet_hdr and _enable_offload(fd)
        return Tap(fd, name, socket.if_nametoindex(name), vnet_hdr, offload)
    except BaseException:
        os.close(fd)
        raise


def _set_vnet_hdr_len(fd: int, name: str) -> None:
    """Use the 12-byte header (the default is the 10-byte one without ``num_buffers``)."""
    try:
        linux.ioctl_int(fd, linux.TUNSETVNETHDRSZ, VNET_HDR_LEN)
    except OSError as exc:
        raise TunError(f"Failed to set virtio-net header size on {name}: {exc.strerror}") from exc


def _enable_offload(fd: int) -> bool:
    """Ask for checksum and TSO offload; False (software checksums) if the kernel says no."""
    try:
        linux.ioctl(fd, linux.TUNSETOFFLOAD, _OFFLOADS)
    except OSError:
        return False
    return True
