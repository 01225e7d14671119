"""Where captured rows live while a capture runs: in memory or spilled to a ``.npy`` file.

Spilled rows are written with plain file writes, not through a writable memory map: dirty
pages of a writable map count in the process's resident set until the kernel flushes them,
whereas written file pages sit in the page cache, which the kernel can drop.  The ``.npy``
header is written with room to spare and rewritten with the final shape at the end, so the
file needs no second copy, and the result is opened as a copy-on-write memory map.

Each capture writes into a new directory of its own (:func:`make_spill_dir`) and creates its
files exclusively, so it never writes over another capture's rows or over files it did not
make.  A finished file is described by a :class:`FileStamp` (shape, dtype, size, modification
time); :meth:`FileStamp.open` checks the file against it before memory-mapping, because a map
of a file that was later truncated kills the process with SIGBUS on the first read past the
new end, where a check gives a clear error.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from ibtools.errors import InputError, InputTypeError

#: Bytes reserved for the ``.npy`` header (magic, version, length, dict, padding).
_HEADER_BYTES = 128

_NUMPY_DTYPES = {torch.float16: np.float16, torch.float32: np.float32,
                 torch.float64: np.float64, torch.int64: np.int64}


def numpy_dtype(dtype: torch.dtype):
    if dtype not in _NUMPY_DTYPES:
        raise InputError(f"store_dtype={dtype} cannot be spilled to .npy; use torch.float16, "
                         f"torch.float32 or torch.float64 with spill_dir")
    return np.dtype(_NUMPY_DTYPES[dtype])


def npy_header(shape: tuple, dtype: np.dtype) -> bytes:
    """A version-1.0 ``.npy`` header padded to exactly ``_HEADER_BYTES`` bytes."""
    body = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {tuple(shape)!r}, }}"
    pad = _HEADER_BYTES - 10 - len(body) - 1
    if pad < 0:
        raise InputError(f"shape {shape} does not fit the reserved .npy header")
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
        self.file = open(path, "x+b")  # exclusive: never replaces an existing file
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
        return FileStamp.of(self.path)

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


# --------------------------------------------------------------------------- spill directories


def check_spill_dir(spill_dir) -> None:
    """Refuse a ``spill_dir`` that is not a usable directory, before any work is done."""
    if spill_dir is None:
        return
    if not isinstance(spill_dir, (str, os.PathLike)):
        raise InputTypeError(f"spill_dir={spill_dir!r} must be a directory path (str or Path) or "
                             f"None")
    path = Path(spill_dir)
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            raise InputError(f"spill_dir={str(spill_dir)!r}: {str(part)!r} is a file, not a "
                             f"directory; give a directory (created if missing) or None")


def make_spill_dir(spill_dir) -> str:
    """A new, uniquely named, empty directory for one capture's files.

    ``None``: a new temporary directory ``ibtools-activations-*``.  Otherwise a new
    ``capture-*`` subdirectory of ``spill_dir`` (created if missing); files already in
    ``spill_dir`` are never touched.
    """
    if spill_dir is None:
        return tempfile.mkdtemp(prefix="ibtools-activations-")
    check_spill_dir(spill_dir)
    try:
        os.makedirs(spill_dir, exist_ok=True)
        return tempfile.mkdtemp(prefix="capture-", dir=spill_dir)
    except OSError as exc:
        raise InputError(f"spill_dir={str(spill_dir)!r} cannot hold the capture's files: "
                         f"{exc.strerror or exc}") from exc


# --------------------------------------------------------------------------- checked files


def read_npy_header(path: str) -> tuple[tuple, np.dtype, int]:
    """Shape, dtype and data offset of a ``.npy`` file, read from its header alone."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
            offset = f.tell()
    except FileNotFoundError:
        raise InputError(f"{path}: the file is gone (deleted or moved after it was "
                         f"written)") from None
    except (ValueError, OSError) as exc:
        raise InputError(f"{path} is not a readable .npy file: {exc}") from exc
    if fortran or dtype.hasobject:
        raise InputError(f"{path} is not a C-ordered numeric .npy file as ibtools writes them")
    return tuple(shape), dtype, offset


@dataclasses.dataclass(frozen=True)
class FileStamp:
    """What a ``.npy`` file held when it was written (or loaded): checked before each use."""

    path: str
    shape: tuple
    dtype: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> "FileStamp":
        """Stamp ``path`` as it is now; its header must describe exactly its data."""
        shape, dtype, offset = read_npy_header(path)
        size = os.stat(path).st_size
        expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != expected:
            raise InputError(f"{path} is {size} bytes but its header describes {shape} "
                             f"{dtype} data ({expected} bytes): the file was cut short or "
                             f"extended")
        return cls(str(path), shape, dtype.str, size, os.stat(path).st_mtime_ns)

    def check(self, what: str) -> None:
        """Raise ValueError naming ``what`` if the file differs from the stamp."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise InputError(f"{what}: its file {self.path} is gone (deleted or moved after it "
                             f"was written)") from None
        if (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns):
            return
        now = f"{st.st_size} bytes" if st.st_size != self.size else "a new modification time"
        raise InputError(f"{what}: its file {self.path} was changed after it was written "
                         f"({self.size} bytes, shape {self.shape}; now {now}); something "
                         f"else wrote over it, so its rows cannot be trusted. Capture or "
                         f"save again into a directory of its own")

    def open(self, what: str) -> torch.Tensor:
        """The file as a copy-on-write memory-mapped tensor, after :meth:`check`."""
        self.check(what)
        shape, dtype, _ = read_npy_header(self.path)
        if shape != self.shape or dtype.str != self.dtype:
            raise InputError(f"{what}: its file {self.path} now holds {shape} {dtype} data; it "
                             f"was written as {self.shape} {self.dtype}")
        return open_npy(self.path)
