"""Data for analysis, named by a string the CLI accepts.

- ``"digits"``: scikit-learn's 8x8 digits.  The split is fixed and shared with the training
  of the reference models: ``train_test_split(X, y, test_size=0.25, random_state=0,
  stratify=y)`` on ``load_digits()``, pixels divided by 16 so they lie in [0, 1].  Inputs are
  flat ``(n, 64)`` or images ``(n, 1, 8, 8)``, whichever the model accepts.
- ``"text:PATH"``: a text file read as bytes (ids 0..255), or through the model's own
  tokenizer when it has one; windows of ``seq_len + 1`` tokens give inputs ``w[:-1]`` and
  next-token targets ``w[1:]``.  ``split="train"`` is the first 90% of the tokens,
  ``"test"`` (alias ``"val"``) the last 10%, ``"all"`` everything: the same cut as the
  reference models' training.  ``"text"`` alone is the source of Python's ``inspect``
  module, their default corpus.
- ``"npz:PATH"``: arrays ``X`` and ``Y`` (or ``X_<split>`` and ``Y_<split>`` when present).
- ``"package.module:function"``: the function returns an iterable of ``(inputs, targets)``
  batches (or a tuple ``(inputs, targets)``); it is called with whichever of ``split``,
  ``max_samples``, ``seq_len``, ``seed`` and ``model`` it declares (unset ones left out).
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import os
import zipfile

import numpy as np
import torch

from ibtools.errors import InputError, InputTypeError

SPLITS = ("train", "test", "val", "all")
DEFAULT_SEQ_LEN = 128
_SPEC_FORMS = "'digits', 'text:PATH', 'npz:PATH' or 'package.module:function'"


def infer_kind(inputs, targets) -> str:
    """``"language"`` for integer inputs (B, T) with targets of the same shape, else
    ``"classification"``."""
    inputs, targets = torch.as_tensor(inputs), torch.as_tensor(targets)
    if (not inputs.is_floating_point() and inputs.ndim == 2
            and tuple(targets.shape) == tuple(inputs.shape)):
        return "language"
    return "classification"


class AnalysisData:
    """Inputs and targets held in memory, served in batches.

    Attributes
    ----------
    inputs, targets : Tensor
        Classification: inputs (n, ...) float, targets (n,) int64.  Language: inputs (n, T)
        int64 token ids, targets (n, T) the next-token ids.
    kind : str
        ``"classification"`` or ``"language"``.
    name : str
        The spec it came from.
    meta : dict
        Source details (split, tokenizer, vocabulary size, ...).
    """

    def __init__(self, inputs, targets, *, kind: str | None = None, name: str = "tensors",
                 meta: dict | None = None):
        self.inputs, self.targets = torch.as_tensor(inputs), torch.as_tensor(targets)
        if self.inputs.shape[0] != self.targets.shape[0]:
            raise InputError(f"inputs have {self.inputs.shape[0]} samples but targets have "
                             f"{self.targets.shape[0]}")
        self.kind = kind or infer_kind(self.inputs, self.targets)
        if self.kind not in ("classification", "language"):
            raise InputError(f"kind={self.kind!r}; use 'classification' or 'language'")
        self.name, self.meta = name, dict(meta or {})

    @property
    def n_samples(self) -> int:
        return int(self.inputs.shape[0])

    def n_rows(self, per_token: bool) -> int:
        """Rows a capture will see: samples, or samples x positions for per-token rows."""
        if per_token and self.kind == "language":
            return self.n_samples * int(self.inputs.shape[1])
        return self.n_samples

    def batches(self, batch_size: int):
        for i in range(0, self.n_samples, batch_size):
            yield self.inputs[i:i + batch_size], self.targets[i:i + batch_size]

    def __len__(self) -> int:
        return self.n_samples

    def __repr__(self) -> str:
        return (f"AnalysisData({self.name!r}, kind={self.kind!r}, n={self.n_samples}, "
                f"inputs={tuple(self.inputs.shape)})")


class BatchStream:
    """Batches from a callable that returns an iterable of ``(inputs, targets)`` (called
    anew for each pass), or from a re-iterable such as a DataLoader."""

    def __init__(self, source, *, kind: str | None = None, name: str = "batches"):
        self._source, self.name, self.meta = source, name, {}
        self._kind = kind
        self._peeked: list = []  # a batch read to infer the kind from a one-shot iterator

    def _iterable(self):
        if callable(self._source):
            return self._source()
        if self._peeked:
            return itertools.chain([self._peeked.pop()], self._source)
        return self._source

    @property
    def kind(self) -> str:
        if self._kind is None:
            iterable = self._iterable()
            iterator = iter(iterable)
            first = next(iterator, None)
            if first is None:
                raise InputError(f"data {self.name!r} yielded no batches")
            if iterator is iterable and not callable(self._source):
                self._peeked.append(first)
            self._kind = infer_kind(first[0], first[1])
        return self._kind

    def n_rows(self, per_token: bool):
        return None

    def batches(self, batch_size: int):
        for item in self._iterable():
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise InputTypeError(f"data {self.name!r}: each batch must be a pair (inputs, "
                                     f"targets), got {type(item).__name__}")
            yield item[0], item[1]


def as_analysis_data(data, model=None):
    """Whatever :func:`capture_activations` accepts, as an object with ``kind``, ``name`` and
    ``batches(batch_size)``."""
    if isinstance(data, (AnalysisData, BatchStream)):
        return data
    if isinstance(data, str):
        return load_dataset(data, model=model)
    if isinstance(data, tuple) and len(data) == 2:
        return AnalysisData(*data)
    if callable(data) or hasattr(data, "__iter__"):
        return BatchStream(data, name=type(data).__name__)
    raise InputTypeError(f"data: {type(data).__name__} is not accepted; give a spec string "
                         f"({_SPEC_FORMS}), load_dataset(...)'s result, a tuple (inputs, "
                         f"targets) or an iterable of (inputs, targets) batches")


def load_dataset(spec: str, *, model=None, split: str = "test", max_samples: int | None = None,
                 seq_len: int | None = None, seed: int = 0, tokenizer=None):
    """Load analysis data named by ``spec`` (see the module docstring).

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"text:PATH"``, ``"npz:PATH"`` or ``"package.module:function"``.
    model : nn.Module, optional
        Used to shape digits inputs, to find a tokenizer and the context length.
    split : {"train", "test", "val", "all"}
    max_samples : int, optional
        Keep this many samples (windows for text), a seeded random subset kept in order.
    seq_len : int, optional
        Tokens per text window; default: the model's context length when known, else 128.
    seed : int
        Seed of the subset choice.
    tokenizer : callable or Hugging Face tokenizer, optional
        Overrides the model's tokenizer for text (a callable str -> list of ids).

    Returns
    -------
    AnalysisData or BatchStream
    """
    if not isinstance(spec, str) or not spec:
        raise InputTypeError(f"spec={spec!r} is not a dataset spec; use {_SPEC_FORMS}")
    if split not in SPLITS:
        raise InputError(f"split={split!r} is not accepted; use one of {list(SPLITS)}")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(
            max_samples, int) or max_samples < 1):
        raise InputError(f"max_samples={max_samples!r} must be a positive int or None")
    if seq_len is not None and (isinstance(seq_len, bool) or not isinstance(seq_len, int)
                                or seq_len < 1):
        raise InputError(f"seq_len={seq_len!r} must be a positive int or None")
    if spec == "digits":
        return _digits(model, split, max_samples, seed)
    scheme, _, rest = spec.partition(":")
    if spec == "text":  # the corpus the reference LMs train on by default
        from ibtools.models.data import default_text_path

        rest, scheme = default_text_path(), "text"
    if scheme == "text" and rest:
        return _text(rest, model, split, max_samples, seq_len, seed, tokenizer)
    if scheme == "npz" and rest:
        return _npz(rest, split, max_samples, seed)
    if rest and ("." in scheme or scheme.isidentifier()):
        return _function(scheme, rest, model, split, max_samples, seq_len, seed)
    raise InputError(f"spec={spec!r} is not a dataset spec; use {_SPEC_FORMS}")


def _subset(n: int, max_samples, seed: int) -> np.ndarray | None:
    if max_samples is None or max_samples >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def digits_split(split: str = "test"):
    """The shared digits split as float32 (n, 64) in [0, 1] and int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = d.data.astype(np.float32) / 16.0, d.target.astype(np.int64)
    if split == "all":
        return x, y
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return (x_tr, y_tr) if split == "train" else (x_te, y_te)


def _accepts_flat(model, x: torch.Tensor) -> bool:
    """Whether ``model`` takes flat (n, 64) digits; otherwise images (n, 1, 8, 8)."""
    was = model.training
    model.eval()
    try:
        p = next(model.parameters(), None)
        probe = x[:2].to(p.device, p.dtype) if p is not None and p.is_floating_point() else x[:2]
        with torch.no_grad():
            model(probe)
        return True
    except (RuntimeError, ValueError, TypeError, IndexError):
        return False
    finally:
        model.train(was)


def _digits(model, split, max_samples, seed):
    x, y = digits_split(split)
    keep = _subset(len(y), max_samples, seed)
    if keep is not None:
        x, y = x[keep], y[keep]
    x = torch.from_numpy(x)
    shape = "flat"
    declared = getattr(model, "input_kind", None)  # the reference models say what they take
    if declared == "image" or (declared is None and model is not None
                               and not _accepts_flat(model, x)):
        x, shape = x.reshape(-1, 1, 8, 8), "image"
    return AnalysisData(x, torch.from_numpy(y), kind="classification", name="digits",
                        meta={"split": split, "shape": shape, "n_classes": 10})


def _context_length(model):
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    get = cfg.get if isinstance(cfg, dict) else (lambda k: getattr(cfg, k, None))
    for key in ("block_size", "max_seq_len", "context_length", "n_positions",
                "max_position_embeddings"):
        v = get(key)
        if isinstance(v, int) and v > 0:
            return v
    return None


def model_tokenizer(model):
    """The Hugging Face tokenizer saved next to a model loaded from a directory, if any."""
    cfg = getattr(model, "config", None)
    path = getattr(cfg, "name_or_path", None) or getattr(cfg, "_name_or_path", None)
    if not path or not os.path.isdir(path):
        return None
    if not any(os.path.exists(os.path.join(path, f))
               for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json")):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def _text(path, model, split, max_samples, seq_len, seed, tokenizer):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text:{path}: no such file")
    limit = _context_length(model) if model is not None else None
    if seq_len is None:
        seq_len = min(DEFAULT_SEQ_LEN, limit) if limit else DEFAULT_SEQ_LEN
    elif limit is not None and seq_len > limit:
        raise InputError(f"seq_len={seq_len} exceeds the model's context length {limit}")
    tok = tokenizer if tokenizer is not None else (model_tokenizer(model) if model is not None
                                                   else None)
    if tok is None:
        with open(path, "rb") as f:
            ids = np.frombuffer(f.read(), dtype=np.uint8).astype(np.int64)
        vocab, how = 256, "bytes"
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        encoded = tok(text)
        ids = np.asarray(encoded["input_ids"] if isinstance(encoded, dict) or hasattr(
            encoded, "keys") else encoded, dtype=np.int64)
        vocab, how = getattr(tok, "vocab_size", None), type(tok).__name__
    cut = int(len(ids) * (1 - 0.1))  # the same cut as ibtools.models.load_text
    ids = {"train": ids[:cut], "test": ids[cut:], "val": ids[cut:], "all": ids}[split]
    n_windows = (len(ids) - 1) // seq_len
    if n_windows < 1:
        raise InputError(f"text:{path} split={split!r} has {len(ids)} tokens, fewer than "
                         f"seq_len + 1 = {seq_len + 1}; use a longer file, split='all' or a "
                         f"smaller seq_len")
    starts = np.arange(n_windows) * seq_len
    keep = _subset(n_windows, max_samples, seed)
    if keep is not None:
        starts = starts[keep]
    windows = np.stack([ids[s:s + seq_len + 1] for s in starts])
    return AnalysisData(torch.from_numpy(windows[:, :-1].copy()),
                        torch.from_numpy(windows[:, 1:].copy()), kind="language",
                        name=f"text:{path}", meta={"split": split, "seq_len": seq_len,
                                                   "tokenizer": how, "vocab_size": vocab,
                                                   "window_starts": starts.tolist()})


def _npz(path, split, max_samples, seed):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"npz:{path} is not a readable .npz file: {exc}") from exc
    for xk, yk in ((f"X_{split}", f"Y_{split}"), ("X", "Y"), ("x", "y")):
        if xk in arrays and yk in arrays:
            x, y = arrays[xk], arrays[yk]
            break
    else:
        raise InputError(f"npz:{path} holds {sorted(arrays)}; it needs arrays 'X' and 'Y' (or "
                         f"'X_{split}' and 'Y_{split}')")
    keep = _subset(len(x), max_samples, seed)
    if keep is not None:
        x, y = x[keep], y[keep]
    x = torch.from_numpy(np.ascontiguousarray(x))
    if x.is_floating_point():
        x = x.float()
    return AnalysisData(x, torch.from_numpy(np.ascontiguousarray(y)).long(),
                        name=f"npz:{path}", meta={"split": split})


def _function(module_name, attr, model, split, max_samples, seq_len, seed):
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"dataset spec '{module_name}:{attr}': cannot import {module_name!r} "
                         f"({exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise InputError(f"dataset spec '{module_name}:{attr}': {module_name!r} has no "
                             f"attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputTypeError(f"dataset spec '{module_name}:{attr}' is not callable")
    offered = {"split": split, "max_samples": max_samples, "seq_len": seq_len, "seed": seed,
               "model": model}
    params = inspect.signature(obj).parameters
    # Unset options are left out so that the function's own defaults apply.
    kwargs = {k: v for k, v in offered.items() if k in params and v is not None}
    result = obj(**kwargs)
    if isinstance(result, (AnalysisData, BatchStream)):
        return result
    if isinstance(result, tuple) and len(result) == 2 and all(
            isinstance(a, (np.ndarray, torch.Tensor)) for a in result):
        return AnalysisData(*result, name=f"{module_name}:{attr}")
    if inspect.isgenerator(result):  # one-shot: call the function again for each pass
        first = [result]

        def again():
            return first.pop() if first else obj(**kwargs)
        return BatchStream(again, name=f"{module_name}:{attr}")
    return BatchStream(result, name=f"{module_name}:{attr}")
