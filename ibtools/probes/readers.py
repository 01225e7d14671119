"""Checkpoint readers: one small object per format, tried in order by :func:`load_model`.

A reader says whether a request is its own (:meth:`CheckpointReader.claims`, cheap: a
suffix, a directory layout, a header) and turns it into ``(model, info)``
(:meth:`CheckpointReader.read`).  :data:`READERS` is the ordered list; the first reader
that claims a request reads it.  Adding a format is one reader class plus one
:func:`register_reader` call::

    class NpzReader(CheckpointReader):
        name = "npz"

        def claims(self, request):
            return request.path is not None and request.path.endswith(".npz")

        def read(self, request):
            ...                                    # build the model, load the arrays
            return model, request.info(format="npz", arch=arch)

    register_reader(NpzReader(), before="file")

Every reader keeps the loading rules of :mod:`ibtools.probes.checkpoints`: architecture
strings stored in a file go through :func:`~ibtools.probes.architectures.choose_architecture`
(or :func:`~ibtools.probes.architectures.stored_arch`) before anything is imported, and
pickles that need more than tensors are refused without ``trust_pickle``.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

import torch
from torch import nn

from ibtools.errors import InputError, InputTypeError
from ibtools.models.checkpoint_format import (
    MAX_PARAMETERS,
    is_ibtools_checkpoint,
    read_checkpoint_fields,
)
from ibtools.probes.architectures import (
    UntrustedCodeError,
    build_architecture,
    choose_architecture,
)
from ibtools.probes.checkpoints import (
    load_state_dict_reported,
    read_checkpoint,
    unwrap_state_dict,
)
from ibtools.registry import insert_ordered

__all__ = ["CheckpointReader", "LoadRequest", "READERS", "register_reader", "find_reader",
           "load_hf_directory", "build_and_load"]


@dataclasses.dataclass
class LoadRequest:
    """What :func:`~ibtools.probes.load_model` was asked, as every reader sees it.

    ``checkpoint`` is the path, dict, module or ``None`` the caller gave (``path`` is its
    ``os.fspath`` when it is path-like); the other fields are ``load_model``'s keywords.
    """

    checkpoint: Any
    arch: Any = None
    trust_pickle: bool = False
    trust_code: bool = False
    strict: bool = True
    map_location: Any = "cpu"
    state_key: str | None = None
    max_parameters: int | None = MAX_PARAMETERS
    arch_kwargs: dict = dataclasses.field(default_factory=dict)

    @property
    def path(self) -> str | None:
        c = self.checkpoint
        return os.fspath(c) if isinstance(c, (str, os.PathLike)) else None

    @property
    def where(self) -> str:
        """How messages name the checkpoint."""
        if self.path is not None:
            return f"checkpoint={self.path!r}"
        return f"checkpoint (a {type(self.checkpoint).__name__} in memory)"

    def info(self, **fields) -> dict:
        """The ``info`` dict every reader returns: the common keys, then ``fields``, then
        ``norm``/``lam``/``seed``/``step``/``epoch`` hoisted from meta or config."""
        info = {"checkpoint": self.path, "arch": None, "config": {}, "meta": {},
                "wrapper": None, "missing_keys": [], "unexpected_keys": [],
                "mismatched_keys": [], "stripped_prefixes": []}
        info.update(fields)
        for key in ("norm", "lam", "seed", "step", "epoch"):
            for source in (info.get("meta") or {}, info.get("config") or {}):
                if isinstance(source, dict) and key in source:
                    info.setdefault(key, source[key])
                    break
            info.setdefault(key, None)
        return info


class CheckpointReader:
    """One checkpoint format.  Subclasses set ``name`` and implement both methods."""

    name: str = ""

    def claims(self, request: LoadRequest) -> bool:  # pragma: no cover - interface
        """Whether this reader reads ``request`` (cheap; no model is built)."""
        raise NotImplementedError

    def read(self, request: LoadRequest) -> tuple[nn.Module, dict]:  # pragma: no cover
        """``(model in eval mode on request.map_location, info)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<checkpoint reader {self.name!r}>"


def build_and_load(request: LoadRequest, obj, *, stored: dict | None = None, **fields):
    """Build the architecture (the caller's ``arch``, or the checked ``stored`` one) and load
    the state dict found in ``obj`` (a dict or module; ``None`` for an untrained model):
    what most readers do once they have the file's content."""
    arch, kwargs = choose_architecture(request.arch, stored, dict(request.arch_kwargs),
                                       where=request.where, trust_code=request.trust_code,
                                       max_parameters=request.max_parameters)
    model = build_architecture(arch, **kwargs)
    built = getattr(model, "config", None)
    fields.update(arch=arch if isinstance(arch, str) else getattr(arch, "__qualname__", repr(arch)),
                  config=dict(built) if isinstance(built, dict) else dict(kwargs))
    if stored is not None:
        fields["meta"] = stored["meta"]
    if obj is not None:
        state_dict, fields["wrapper"] = unwrap_state_dict(obj, request.state_key)
        state_dict = {k: (v.to(request.map_location) if isinstance(v, torch.Tensor) else v)
                      for k, v in state_dict.items()}
        fields.update(load_state_dict_reported(model, state_dict, request.strict))
    return model.to(request.map_location).eval(), request.info(**fields)


def _interpret(request: LoadRequest, obj, fmt: str, metadata: dict):
    """A loaded object: a trusted module as it is, else an ibtools checkpoint or a state dict."""
    if isinstance(obj, nn.Module) and request.arch is None:  # a trusted pickled module
        cls = type(obj)
        return obj.to(request.map_location).eval(), request.info(
            format="module", arch=f"{cls.__module__}.{cls.__qualname__}")
    if isinstance(obj, dict) and is_ibtools_checkpoint(obj):
        stored = read_checkpoint_fields(obj, where=request.where)
        return build_and_load(request, {"state_dict": stored["state_dict"]}, stored=stored,
                              format="ibtools")
    stored = (read_checkpoint_fields(metadata, where=request.where)
              if is_ibtools_checkpoint(metadata) else None)
    return build_and_load(request, obj, stored=stored, format=fmt)


# --- the readers, in the order load_model tries them -----------------------------------------

class HuggingFaceReader(CheckpointReader):
    """A Hugging Face model directory (``config.json`` + weights), or ``arch="hf:DIR"``."""

    name = "huggingface"

    def claims(self, request):
        path = request.path
        return path is not None and os.path.isdir(path) and \
            os.path.isfile(os.path.join(path, "config.json"))

    def read(self, request):
        model, hf_info = load_hf_directory(request.path, map_location=request.map_location,
                                           trust_code=request.trust_code, **request.arch_kwargs)
        return model.eval(), request.info(**hf_info, format="huggingface")


class SavedModelReader(CheckpointReader):
    """A file :func:`ibtools.save_model` wrote (architecture, arguments, swapped norms)."""

    name = "saved-model"

    def claims(self, request):
        from ibtools.saving import read_saved_model

        return request.path is not None and read_saved_model(request.path) is not None

    def read(self, request):
        from ibtools.saving import load_saved_model

        return load_saved_model(request.path, arch=request.arch, trust_code=request.trust_code,
                                strict=request.strict, map_location=request.map_location,
                                max_parameters=request.max_parameters, **request.arch_kwargs)


class FileReader(CheckpointReader):
    """Any other file: an ibtools checkpoint, a (wrapped) state dict, safetensors, or a full
    pickled module behind ``trust_pickle``."""

    name = "file"

    def claims(self, request):
        return request.path is not None and not os.path.isdir(request.path)

    def read(self, request):
        obj, fmt, metadata = read_checkpoint(request.path, trust_pickle=request.trust_pickle,
                                             map_location=request.map_location)
        return _interpret(request, obj, fmt, metadata)


class ObjectReader(CheckpointReader):
    """A dict or module already in memory."""

    name = "object"

    def claims(self, request):
        return isinstance(request.checkpoint, (dict, nn.Module))

    def read(self, request):
        return _interpret(request, request.checkpoint, "object", {})


class UntrainedReader(CheckpointReader):
    """No checkpoint: an untrained model of ``arch``."""

    name = "untrained"

    def claims(self, request):
        return request.checkpoint is None

    def read(self, request):
        return build_and_load(request, None, format="none")


READERS: list[CheckpointReader] = [HuggingFaceReader(), SavedModelReader(), FileReader(),
                                   ObjectReader(), UntrainedReader()]


def register_reader(reader: CheckpointReader, *, before: str | None = None) -> CheckpointReader:
    """Add ``reader`` to :data:`READERS`: before the reader named ``before`` (e.g.
    ``"file"``, which claims every file), else last.  A reader of the same name is replaced.
    Returns the reader, so it can be used as a class decorator's result."""
    if not (isinstance(getattr(reader, "name", None), str) and reader.name
            and callable(getattr(reader, "claims", None)) and callable(getattr(reader, "read",
                                                                               None))):
        raise InputTypeError(f"reader={reader!r} is not a checkpoint reader: it needs a non-empty "
                             f"'name' and 'claims(request)' / 'read(request)' methods")
    return insert_ordered(READERS, reader, lambda r: r.name, before=before, what="reader")


def find_reader(request: LoadRequest) -> CheckpointReader:
    """The first reader in :data:`READERS` that claims ``request``."""
    for reader in READERS:
        if reader.claims(request):
            return reader
    path = request.path
    if path is not None and os.path.isdir(path):
        raise InputError(f"checkpoint={path!r} is a directory without config.json; give a "
                         f"checkpoint file or a Hugging Face directory")
    raise InputError(f"{request.where}: no checkpoint reader claims it (readers: "
                     f"{[r.name for r in READERS]})")


def load_hf_directory(path, *, map_location="cpu", trust_code: bool = False, **kwargs):
    """A Hugging Face model directory through transformers (class from ``architectures``).

    The class must be one transformers ships; model code kept in the directory itself
    (``auto_map``) runs only with ``trust_code=True`` (transformers' ``trust_remote_code``).
    """
    try:
        transformers = importlib.import_module("transformers")
    except ImportError as exc:
        raise ImportError(f"{path!r} is a Hugging Face model directory; reading it needs "
                          f"transformers: pip install 'ibtools[hf]'") from exc
    remote = {"trust_remote_code": bool(trust_code), "local_files_only": True}
    try:
        config = transformers.AutoConfig.from_pretrained(path, **remote)
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise UntrustedCodeError(f"{path!r} is a Hugging Face directory with its own model code "
                                 f"(auto_map in config.json); nothing from it was run.  If you "
                                 f"trust it, pass trust_code=True (CLI: --trust-code)") from None
    names = list(getattr(config, "architectures", None) or [])
    cls = getattr(transformers, names[0], None) if names and isinstance(names[0], str) else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        if names and not trust_code:
            raise InputError(f"{os.path.join(path, 'config.json')}: 'architectures' names "
                             f"{names[0]!r}, which is not a model class of transformers; a "
                             f"config file may name only those unless trust_code=True")
        cls = transformers.AutoModel
    try:
        model, loading = cls.from_pretrained(path, output_loading_info=True, **remote, **kwargs)
    except OSError as exc:
        raise InputError(f"hf:{path} could not be loaded (missing or corrupt weights?): "
                         f"{exc}") from exc
    model.to(map_location)
    report = {k: sorted(map(str, loading.get(k, []))) for k in ("missing_keys",
                                                                "unexpected_keys")}
    report["mismatched_keys"] = [list(map(str, m)) for m in loading.get("mismatched_keys", [])]
    return model, {"arch": f"hf:{path}", "config": config.to_dict(), **report}
