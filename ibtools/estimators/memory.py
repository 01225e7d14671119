"""Where and in what precision estimators compute, and how much scratch memory a block uses.

Device and dtype resolution and the memory-budget helpers are shared by the estimators and
by the activation probes (which size their buffers with :func:`parse_bytes`); they depend on
torch alone.
"""

from __future__ import annotations

import torch

from ibtools.errors import InputError

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device, *arrays) -> torch.device:
    """``None``: the device of the first torch input (CPU for numpy); ``"auto"``: CUDA if
    available; anything else: ``torch.device(device)``."""
    if device is None:
        for a in arrays:
            if isinstance(a, torch.Tensor):
                return a.device
        return torch.device("cpu")
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "use None (the inputs' device), 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device={device!r} is not a device; {accepted}") from exc
    if dev.type not in ("cpu", "cuda", "mps"):  # meta, xla, ...: no data lives there
        raise InputError(f"device={device!r} is not a device estimators run on; {accepted}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise InputError(f"device={device!r} asks for CUDA, but torch sees no CUDA device; "
                             f"use 'cpu' or 'auto'")
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device={device!r} asks for CUDA device {dev.index}, but torch "
                             f"sees {count} (cuda:0 to cuda:{count - 1})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device={device!r} asks for Apple's MPS, which this torch cannot "
                         f"use here; use 'cpu' or 'auto'")
    return dev


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in _DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype in _DTYPES:
        return _DTYPES[dtype]
    raise InputError(f"dtype={dtype!r} is not accepted; use 'float32' or 'float64'")




# --------------------------------------------------------------------------- chunking

_SIZE_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_bytes(budget, name: str = "memory_budget") -> int:
    """``268435456``, ``"256MiB"``, ``"1GB"`` -> bytes."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool) and budget > 0:
        return int(budget)
    if isinstance(budget, str):
        s = budget.strip().lower().replace(" ", "")
        for unit in sorted(_SIZE_UNITS, key=len, reverse=True):
            if s.endswith(unit):
                try:
                    val = float(s[: -len(unit)])
                except ValueError:
                    break
                if val > 0:
                    return int(val * _SIZE_UNITS[unit])
    raise InputError(f"{name}={budget!r} is not a size; give bytes (int > 0) or a string such "
                     f"as '256MiB' or '2GB'")


def default_memory_budget(device: torch.device) -> int:
    """256 MiB of scratch per pairwise block on CPU; a quarter of free memory on CUDA."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(max(256 * 2**20, free // 4))
    return 256 * 2**20


def chunk_rows(n_rows: int, bytes_per_row: int, budget: int, minimum: int = 1) -> int:
    """Rows per block so that a block of ``bytes_per_row`` each fits in ``budget``."""
    rows = max(minimum, int(budget // max(1, bytes_per_row)))
    return int(min(n_rows, rows))
