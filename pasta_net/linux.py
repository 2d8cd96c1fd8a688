"""The few Linux system calls Python 3.11's ``os`` module lacks, through cffi in ABI mode.

``os.setns`` and ``os.unshare`` arrive only in Python 3.12 and ``prctl`` never did;
``fcntl.ioctl`` exists but hides whether the argument is a value or a pointer. cffi's
ABI mode (``ffi.dlopen(None)`` resolves symbols in the libc the interpreter is already
linked with) needs no compiler at install time. It is the *out-of-line* variant: the
declarations live in ``_linux_build.py``, which generates ``_linux_ffi.py``, so a start
does not parse C with pycparser (that took 55 ms of our 300 ms of imports).

Every wrapper raises ``OSError(errno, strerror)`` on failure, like ``os`` does. The
constants are the kernel's values from ``<linux/sched.h>``, ``<linux/if_tun.h>``,
``<linux/nsfs.h>`` and ``<linux/prctl.h>``; ioctl numbers are built with the kernel's
``_IO``/``_IOW`` encoding so that each one reads like its header line.
"""

from __future__ import annotations

import errno
import os

from pasta_net._linux_ffi import ffi as _ffi

__all__ = [
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CLONE_NEWNET",
    "CLONE_NEWNS",
    "CLONE_NEWUSER",
    "IFF_NO_PI",
    "IFF_TAP",
    "IFF_VNET_HDR",
    "IFNAMSIZ",
    "NS_GET_NSTYPE",
    "NS_GET_PARENT",
    "NS_GET_USERNS",
    "PR_CAP_AMBIENT",
    "PR_CAP_AMBIENT_CLEAR_ALL",
    "PR_SET_DUMPABLE",
    "PR_SET_KEEPCAPS",
    "PR_SET_NO_NEW_PRIVS",
    "TUNSETIFF",
    "TUNSETOFFLOAD",
    "TUNSETVNETHDRSZ",
    "TUN_F_CSUM",
    "TUN_F_TSO4",
    "TUN_F_TSO6",
    "capabilities",
    "ioctl",
    "ioctl_ifreq",
    "ioctl_int",
    "prctl",
    "set_capabilities",
    "setns",
    "unshare",
]

_libc = _ffi.dlopen(None)

# <linux/sched.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000

# <linux/if.h>, <linux/if_tun.h>
IFNAMSIZ = 16
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04

# <linux/prctl.h>
PR_SET_DUMPABLE = 4
PR_SET_KEEPCAPS = 8
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# <linux/capability.h>
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_CAP_WORDS = 2

_IOC_WRITE = 1


def _ioc(direction: int, kind: str, nr: int, size: int) -> int:
    """The kernel's ``_IOC()``: direction, size, type and number packed into 32 bits."""
    return (direction << 30) | (size << 16) | (ord(kind) << 8) | nr


TUNSETIFF = _ioc(_IOC_WRITE, "T", 202, 4)  # _IOW('T', 202, int)
TUNSETOFFLOAD = _ioc(_IOC_WRITE, "T", 208, 4)  # _IOW('T', 208, unsigned int)
TUNSETVNETHDRSZ = _ioc(_IOC_WRITE, "T", 216, 4)  # _IOW('T', 216, int)
NS_GET_USERNS = _ioc(0, "\xb7", 0x1, 0)  # _IO(NSIO, 0x1)
NS_GET_PARENT = _ioc(0, "\xb7", 0x2, 0)  # _IO(NSIO, 0x2)
NS_GET_NSTYPE = _ioc(0, "\xb7", 0x3, 0)  # _IO(NSIO, 0x3)


def _check(result: int) -> int:
    if result == -1:
        err = _ffi.errno
        raise OSError(err, os.strerror(err))
    return result


def setns(fd: int, nstype: int = 0) -> None:
    """Move the calling *thread* into the namespace ``fd`` refers to (0: any type)."""
    _check(_libc.setns(fd, nstype))


def unshare(flags: int) -> None:
    """Give the calling process new namespaces of the ``CLONE_NEW*`` kinds in ``flags``."""
    _check(_libc.unshare(flags))


def ioctl(fd: int, request: int, arg: int = 0) -> int:
    """An ioctl whose argument is a plain value (or absent); returns the kernel's result.

    ``ioctl`` is variadic, so cffi needs the argument's C type spelled out.
    """
    return _check(_libc.ioctl(fd, request, _ffi.cast("unsigned long", arg)))


def ioctl_int(fd: int, request: int, value: int) -> None:
    """An ioctl that reads an ``int`` through a pointer (``TUNSETVNETHDRSZ``)."""
    _check(_libc.ioctl(fd, request, _ffi.new("int *", value)))


def ioctl_ifreq(fd: int, request: int, name: str, flags: int) -> str:
    """An ioctl on a ``struct ifreq`` carrying a name and flags; returns the name after it.

    The kernel writes the final name back (``TUNSETIFF`` with ``"tap%d"`` or ``""``).
    """
    encoded = name.encode()
    if len(encoded) >= IFNAMSIZ:
        raise OSError(errno.EINVAL, f"Interface name too long (max {IFNAMSIZ - 1} bytes): {name}")
    ifr = _ffi.new("struct ifreq *")
    ifr.ifr_name = encoded
    ifr.ifr_flags = flags
    _check(_libc.ioctl(fd, request, ifr))
    return _ffi.string(ifr.ifr_name).decode()


def capabilities() -> tuple[int, int, int]:
    """The calling thread's ``(effective, permitted, inheritable)`` capability masks."""
    header = _ffi.new("struct cap_header *", (_LINUX_CAPABILITY_VERSION_3, 0))
    data = _ffi.new("struct cap_data[2]")
    _check(_libc.capget(header, data))
    effective = permitted = inheritable = 0
    for word in range(_CAP_WORDS):
        shift = 32 * word
        effective |= data[word].effective << shift
        permitted |= data[word].permitted << shift
        inheritable |= data[word].inheritable << shift
    return effective, permitted, inheritable


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    """``capset`` for the calling *thread* (capabilities are per thread in Linux)."""
    header = _ffi.new("struct cap_header *", (_LINUX_CAPABILITY_VERSION_3, 0))
    data = _ffi.new("struct cap_data[2]")
    for word in range(_CAP_WORDS):
        shift = 32 * word
        data[word].effective = (effective >> shift) & 0xFFFFFFFF
        data[word].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[word].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.capset(header, data))


def prctl(option: int, arg2: int = 0) -> int:
    """``prctl(option, arg2, 0, 0, 0)``: ``PR_SET_NO_NEW_PRIVS``, ``PR_SET_DUMPABLE``,
    ``PR_CAP_AMBIENT``."""
    return _check(_libc.prctl(option, arg2, 0, 0, 0))
