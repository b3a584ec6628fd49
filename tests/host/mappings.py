"""File mappings for the tests of releasing a model file's resident pages (host.runtime, host.native)."""
from __future__ import annotations

import contextlib
import mmap
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def mapped_rss(path) -> int:
    """Resident bytes of this process's mappings of ``path`` (from /proc/self/smaps)."""
    real, rss, current = os.path.realpath(path), 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                current = len(head) >= 6 and line.split(maxsplit=5)[5].strip() == real
            elif current and head[0] == "Rss:":
                rss += int(head[1]) * 1024
    return rss


def resident_bytes(address: int, length: int) -> int:
    """Resident bytes of [address, address + length) by mincore(2), whichever mappings the range lies in (the
    kernel may have merged a mapping with its neighbours into one)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p]
    vec = ctypes.create_string_buffer((length + 4095) // 4096)
    assert libc.mincore(address, length, vec) == 0, ctypes.get_errno()
    return sum(b & 1 for b in vec.raw) * 4096


class Anonymous:
    """A private anonymous mapping made with mmap(2) (as malloc makes a large buffer), nothing touched yet: its
    ``address``; ``[a:b]`` reads and writes bytes (for writable mappings); ``close`` unmaps it."""

    def __init__(self, size: int, prot: int):
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.mmap.restype = ctypes.c_void_p
        self._libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                    ctypes.c_long]
        self._libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.size = size
        self.address = self._libc.mmap(None, size, prot, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, -1, 0)
        assert self.address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        self._view = (ctypes.c_char * size).from_address(self.address)

    def __getitem__(self, s: slice) -> bytes:
        return self._view[s]

    def __setitem__(self, s: slice, value: bytes) -> None:
        self._view[s] = value

    def close(self) -> None:
        if self.address is not None:
            self._libc.munmap(self.address, self.size)
            self.address = None


def private_anonymous(size: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> tuple[Anonymous, int]:
    """A private anonymous mapping of ``size`` bytes and its address."""
    m = Anonymous(size, prot)
    return m, m.address


@dataclass
class Mappings:
    data: np.ndarray      # what both files hold
    ro: Path              # mapped read-only (``read``)
    rw: Path              # mapped private and writable (``edited``), its first 4 bytes changed to b"edit"
    read: mmap.mmap
    edited: mmap.mmap

    def read_sum(self) -> int:
        return int(np.frombuffer(self.read, np.uint8).sum())


@contextlib.contextmanager
def two_mappings(folder: Path, size: int):
    """Two files of the same ``size`` random bytes: one mapped read-only, one mapped private and written to (its
    pages may hold the only copy of that change), both faulted in; unmapped on exit."""
    data = np.random.default_rng(0).integers(0, 255, size, dtype=np.uint8)
    ro, rw = folder / "ro.bin", folder / "rw.bin"
    ro.write_bytes(data.tobytes())
    rw.write_bytes(data.tobytes())
    with open(ro, "rb") as f, open(rw, "r+b") as g:
        m = Mappings(data, ro, rw, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ),
                     mmap.mmap(g.fileno(), 0, access=mmap.ACCESS_COPY))
        try:
            m.edited[:4] = b"edit"
            assert m.read_sum() == int(data.sum()) and np.frombuffer(m.edited, np.uint8).sum() > 0
            yield m
        finally:
            m.read.close()
            m.edited.close()
