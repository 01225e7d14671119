"""Reading ``ibtools analyze --config FILE``: JSON or TOML, checked key by key, so a wrong
value is named with its key and never silently read another way."""

from __future__ import annotations

import json
from pathlib import Path

from ibtools.cli_helpers import UserError


def read_config(path: str) -> dict:
    """The options of an ``ibtools analyze --config`` file (JSON or TOML), in either layout:
    options at the top level, or a run's own config.json (``settings`` plus ``checkpoints``
    and ``betas``).  List options take a single item as a one-element list."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"--config {path}: no such file")
    text = p.read_text(encoding="utf-8")
    if p.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError as exc:
                raise UserError("--config: reading TOML on Python 3.10 needs `pip install tomli`; "
                                "or give a JSON file") from exc
        try:
            data = tomllib.loads(text)
        except Exception as exc:
            raise UserError(f"--config {path}: not valid TOML ({exc})") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--config {path}: not valid JSON ({exc}); use .json or .toml") from exc
    if not isinstance(data, dict):
        raise UserError(f"--config {path} must hold an object (key: value pairs, as in "
                        f"{{\"checkpoints\": [...]}}); got a {type(data).__name__}")
    if "settings" in data:  # the layout of a run's own config.json
        data = _merge_run_config(data, path)
    return {key: _config_list(key, value, path) if key in _CONFIG_LISTS else value
            for key, value in data.items()}


#: Top-level keys of a run's config.json that record the run rather than ask for anything.
_RUN_RECORD_KEYS = ("ibtools_version", "torch_version", "device", "environment")
#: Config keys that hold lists: the types of their items and how to describe them.  A single
#: item stands for a one-element list (a string is one path, pattern or spec, never letters).
_CONFIG_LISTS = {
    "checkpoints": ((str,), "checkpoint paths (strings)"),
    "layers": ((str,), "layer names or patterns (strings)"),
    "estimators": ((str, dict), "estimator specs (strings such as 'kde:noise_var=0.1', or "
                                "objects with a 'method' key)"),
    "betas": ((int, float), "numbers"),
}


def _merge_run_config(data: dict, path: str) -> dict:
    """Options of a config in config.json's layout: ``settings`` plus ``checkpoints`` and
    ``betas`` at the top; any other top-level option would silently lose to or shadow one in
    ``settings``, so it is refused."""
    settings = data["settings"]
    if not isinstance(settings, dict):
        raise UserError(f"--config {path}: 'settings' must be an object of analyze options (the "
                        f"layout of a run's config.json); got {settings!r}")
    extra = sorted(set(data) - {"settings", "checkpoints", "betas", *_RUN_RECORD_KEYS})
    extra += sorted(k for k in ("checkpoints", "betas") if k in data and k in settings)
    if extra:
        raise UserError(f"--config {path} holds both 'settings' (the layout of a run's "
                        f"config.json) and top-level {', '.join(map(repr, extra))}; one of them "
                        f"would be dropped. Move {', '.join(map(repr, extra))} into 'settings', "
                        f"or drop 'settings' and give every option at the top level")
    merged = dict(settings)
    merged.update({k: data[k] for k in ("checkpoints", "betas") if k in data})
    return merged


def _config_list(key: str, value, path: str):
    kinds, what = _CONFIG_LISTS[key]
    if value is None:
        return None
    if isinstance(value, kinds) and not isinstance(value, bool):
        return [value]
    if not isinstance(value, list):
        raise UserError(f"--config {path}: '{key}' must be a list of {what} (or a single one); "
                        f"got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, kinds):
            raise UserError(f"--config {path}: '{key}' must be a list of {what}; it holds "
                            f"{item!r} ({type(item).__name__})")
    return value
