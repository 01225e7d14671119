"""Where captured rows live while a capture runs: in memory or spilled to a ``.npy`` file.

Spilled rows are written with plain file writes, not through a writable memory map: dirty
pages of a writable map count in the process's resident set until the kernel flushes them,
whereas written file pages sit in the page cache, which the kernel can drop.  The ``.npy``
header is written with room to spare and rewritten with the final shape at the end, so the
file needs no second copy, and the result is opened as a copy-on-write memory map.
"""

from __future__ import annotations

import numpy as np
import torch

#: Bytes reserved for the ``.npy`` header (magic, version, length, dict, padding).
_HEADER_BYTES = 128

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64, torch.int64: np.int64}


def numpy_dtype(dtype: torch.dtype):
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"store_dtype={dtype} cannot be spilled to .npy; use torch.float16, "
                         f"torch.float32 or torch.float64 with spill_dir")
    return np.dtype(_NUMPY_DTYPES[dtype])


def npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    """A version-1.0 ``.npy`` header padded to exactly ``_HEADER_BYTES`` bytes."""
    body = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise ValueError(f"shape {shape} does not fit the reserved .npy header")
    text = (body + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text


class MemoryRows:
    """Rows of width ``dim`` in a tensor on ``device``, grown by doubling when needed."""

    spilled = False

    def __init__(self, dim: int, dtype: torch.dtype, device, initial_rows: int = 1024):
        self.dim, self.dtype, self.device = dim, dtype, torch.device(device)
        self.buffer = torch.empty((max(1, initial_rows), dim), dtype=dtype, device=self.device)

    def write(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        if slots.numel() == 0:
            return
        top = int(slots.max()) + 1
        if top > self.buffer.shape[0]:
            grown = torch.empty((max(top, 2 * self.buffer.shape[0]), self.dim), dtype=self.dtype,
                                device=self.device)
            grown[: self.buffer.shape[0]] = self.buffer
            self.buffer = grown
        self.buffer[slots.to(self.device)] = rows.to(device=self.device, dtype=self.dtype)

    def finish(self, n_rows: int, order: torch.Tensor | None) -> torch.Tensor:
        out = self.buffer[:n_rows]
        if order is not None:
            out = out[order.to(self.device)]
        elif n_rows < self.buffer.shape[0]:
            out = out.clone()
        self.buffer = None
        return out

    def close(self) -> None:
        self.buffer = None


class DiskRows:
    """Rows of width ``dim`` written into a ``.npy`` file at ``path``."""

    spilled = True

    def __init__(self, path: str, dim: int, dtype: torch.dtype):
        self.path, self.dim, self.dtype = path, dim, dtype
        self.np_dtype = numpy_dtype(dtype)
        self.row_bytes = dim * self.np_dtype.itemsize
        self.file = open(path, "w+b")
        self.file.write(npy_header((0, dim), self.np_dtype))

    def write(self, slots: torch.Tensor, rows: torch.Tensor) -> None:
        if slots.numel() == 0:
            return
        data = rows.detach().to(device="cpu", dtype=self.dtype).contiguous().numpy()
        slots = slots.cpu().numpy()
        # Slots arrive ascending; write each run of consecutive slots with one call.
        breaks = np.flatnonzero(np.diff(slots) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, len(slots)]):
            self.file.seek(_HEADER_BYTES + int(slots[lo]) * self.row_bytes)
            self.file.write(data[lo:hi].tobytes())

    def finish(self, n_rows: int, order: torch.Tensor | None) -> torch.Tensor:
        if order is not None:
            raise RuntimeError("spilled rows are kept in slot order")
        self.file.seek(0)
        self.file.write(npy_header((n_rows, self.dim), self.np_dtype))
        self.file.truncate(_HEADER_BYTES + n_rows * self.row_bytes)
        self.file.close()
        return open_npy(self.path)

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


def open_npy(path: str) -> torch.Tensor:
    """A ``.npy`` file as a CPU tensor over a copy-on-write memory map (nothing is read yet;
    writes to the tensor stay private to this process)."""
    try:
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except ValueError:  # an empty array cannot be memory-mapped
        arr = np.load(path, allow_pickle=False)
    return torch.from_numpy(arr)
