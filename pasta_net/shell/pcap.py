"""pcap writer for ``-p/--pcap``: every frame crossing the tap, in either direction.

Classic libpcap format (magic 0xa1b2c3d4, microsecond timestamps, LINKTYPE_ETHERNET),
which tcpdump, tshark and scapy read. Frames are written unbuffered in one ``write``
each (header and frame via ``os.writev``), so a crash loses nothing already captured.
"""

from __future__ import annotations

import os
import struct
import time

from pasta_net.core.frames import VNET_HDR_LEN

__all__ = ["PcapWriter"]

_FILE_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
_RECORD = struct.Struct("<IIII")


class PcapWriter:
    def __init__(self, path: str) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        os.write(self._fd, _FILE_HEADER)

    def write(self, frame: bytes | memoryview, vnet: bool = True) -> None:
        """Record one frame; ``vnet`` says it still starts with the virtio-net header slot."""
        data = memoryview(frame)[VNET_HDR_LEN:] if vnet else memoryview(frame)
        now = time.time()
        seconds = int(now)
        length = len(data)
        header = _RECORD.pack(seconds, int((now - seconds) * 1e6), min(length, 65535), length)
        os.writev(self._fd, [header, data[:65535]])

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
