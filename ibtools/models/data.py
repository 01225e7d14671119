"""The data the reference models train on, all available offline.

- ``"digits"``: scikit-learn's 8x8 handwritten digits (1797 images, shipped with the
  library), pixels scaled to [0, 1], one fixed stratified 75/25 train/test split.
- ``"text:PATH"``: the bytes of a file, first 90% for training, last 10% for validation.
  ``"text"`` alone uses the source of Python's ``inspect`` module (about 120 kB, always on
  disk), so the language models train without any download.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass

import numpy as np
import torch

from ibtools.errors import InputError, InputTypeError

__all__ = ["DIGITS_SPLIT_SEED", "VisionData", "TextData", "load_digits_split", "load_text", "load_data",
           "default_text_path"]

#: The train/test split of digits never changes with the training seed, so test numbers
#: of different runs are comparable.
DIGITS_SPLIT_SEED = 0


@dataclass
class VisionData:
    x_train: torch.Tensor  # (n, 64) float32 in [0, 1]
    y_train: torch.Tensor  # (n,) int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str = "digits"


@dataclass
class TextData:
    train: torch.Tensor  # (n,) int64 byte ids
    val: torch.Tensor
    name: str


def load_digits_split(test_fraction: float = 0.25) -> VisionData:
    """Digits as float tensors, flat ``(n, 64)``, with the fixed stratified split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_tr, x_te, y_tr, y_te = train_test_split(x, digits.target, test_size=test_fraction,
                                              random_state=DIGITS_SPLIT_SEED, stratify=digits.target)
    as_long = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return VisionData(torch.as_tensor(x_tr), as_long(y_tr), torch.as_tensor(x_te), as_long(y_te))


def default_text_path() -> str:
    """Path of the ``inspect`` module's source, the default offline text corpus."""
    return inspect.getsourcefile(inspect)


def load_text(path: str | os.PathLike, val_fraction: float = 0.1, min_bytes: int = 256) -> TextData:
    """The bytes of ``path`` as token ids, split in order into train and validation parts."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"text data path {path!r} is not a file")
    with open(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < min_bytes:
        raise InputError(f"text file {path!r} has {len(raw)} bytes; at least {min_bytes} are needed")
    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).to(torch.int64)
    cut = int(len(ids) * (1 - val_fraction))
    return TextData(ids[:cut], ids[cut:], name=f"text:{path}")


def load_data(data, input_kind: str) -> VisionData | TextData:
    """Resolve a ``data`` argument (``None``, ``"digits"``, ``"text"``, ``"text:PATH"``) for a model."""
    if data is None:
        data = "text" if input_kind == "tokens" else "digits"
    if not isinstance(data, str):
        raise InputTypeError(f"data must be 'digits', 'text' or 'text:PATH', got "
                             f"{type(data).__name__}")
    if data == "digits":
        if input_kind == "tokens":
            raise InputError("data='digits' is for the vision models; language models need 'text' or 'text:PATH'")
        return load_digits_split()
    if data == "text" or data.startswith("text:"):
        if input_kind != "tokens":
            raise InputError(f"data={data!r} is for the language models; vision models use 'digits'")
        path = data[5:] if data.startswith("text:") else default_text_path()
        return load_text(path)
    raise InputError(f"data must be 'digits', 'text' or 'text:PATH', got {data!r}")
