"""The C declarations behind :mod:`pasta_net.linux`, and the generator of ``_linux_ffi.py``.

cffi's out-of-line ABI mode: this script parses the declarations once (pycparser) and
writes a small pure-Python module of pre-parsed types; importing that needs only
``_cffi_backend``, so no start pays for parsing C. Run it after changing :data:`CDEF`::

    python -m pasta_net._linux_build

``tests/core/test_linux_ffi.py`` fails when the committed module is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cffi

CDEF = """
int setns(int fd, int nstype);
int unshare(int flags);
int ioctl(int fd, unsigned long request, ...);
int prctl(int option, unsigned long arg2, unsigned long arg3,
          unsigned long arg4, unsigned long arg5);

struct cap_header { uint32_t version; int pid; };
struct cap_data { uint32_t effective; uint32_t permitted; uint32_t inheritable; };
int capget(struct cap_header *header, struct cap_data *data);
int capset(struct cap_header *header, const struct cap_data *data);

struct ifreq {
    char ifr_name[16];
    union {
        short ifr_flags;
        int ifr_ifindex;
        char ifr_pad[24];   /* the union is 24 bytes (struct ifmap) on 64-bit */
    };
};
"""
MODULE = Path(__file__).with_name("_linux_ffi.py")


def generate(path: Path = MODULE) -> None:
    """Write the pre-parsed module to ``path``."""
    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source("pasta_net._linux_ffi", None)
    ffi.emit_python_code(str(path))


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else MODULE)
