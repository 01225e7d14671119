"""Helpers of the command line: its user error, the API's advice in CLI words, importing a
``module:factory`` from the current directory, ``--arch-arg`` parsing and merge warnings."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import sys

import click


class UserError(click.ClickException):
    """A problem with what the user gave: one line, exit code 2."""

    exit_code = 2


#: The Python API's advice, in the words of the command line.
_CLI_WORDS = [
    (re.compile(r"pass arch= as one of \(.*?\)$", re.S),
     "use --arch ibtools:<mlp|cnn|vit|gpt|llama>, --arch hf:DIR, --arch torchvision:<name>, "
     "--arch timm:<name> or --arch module:factory (a module in the current directory works)"),
    (re.compile(r"(?<![\w-])arch=('[^']*') \(CLI: --arch '[^']*'\)"), r"--arch \1"),
    (re.compile(r"pass arch="), "use --arch"),
    (re.compile(r"(?<![\w-])arch=('[^']*'): cannot import (.*)$", re.S),
     r"--arch \1: cannot import \2 (the current directory was searched too)"),
    (re.compile(r"(?<![\w-])arch=('[^']*')"), r"--arch \1"),
    (re.compile(r"pass strict=False"), "use --no-strict"),
    (re.compile(r"pass (trust_pickle|trust_code)=True \(CLI: (--[a-z-]+)\)"), r"use \2"),
    (re.compile(r"overwrite=True \(--overwrite\)"), "--overwrite"),
    (re.compile(r"on_duplicate='warn' \(--on-duplicate warn\)"), "--on-duplicate warn"),
]


def cli_wording(message: str) -> str:
    """``message`` with the Python API's advice (``pass arch=``, ``strict=False``) given as the
    command-line options that do the same."""
    for pattern, words in _CLI_WORDS:
        message = pattern.sub(words, message)
    return message


@contextlib.contextmanager
def cwd_importable(spec):
    """Import the module a ``module:factory`` spec names with the current directory on
    ``sys.path`` (for that import only), so ``--arch mymodule:factory`` finds ``mymodule.py``
    here as ``python -c`` would.  The user named the code, which is what the loading rules
    ask (docs/security.md).  Other specs and import errors are left to the API's checks."""
    module, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if sep and attr and module.replace(".", "").replace("_", "").isalnum() and module not in (
            "ibtools", "hf", "torchvision", "timm", "text", "npz"):
        cwd = os.getcwd()
        added = cwd not in sys.path
        if added:
            sys.path.insert(0, cwd)
        try:
            importlib.import_module(module)
        except ImportError:
            pass  # the loader names the module and the cause in its own error
        finally:
            if added and cwd in sys.path:
                sys.path.remove(cwd)
    yield


def arch_args(values) -> dict:
    """``--arch-arg KEY=VALUE`` pairs: each value read as JSON when it parses (``3``, ``true``,
    ``[64, 64]``, ``"tiny"``), else as the text itself."""
    out = {}
    for item in values:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            raise UserError(f"--arch-arg {item!r} is not KEY=VALUE with KEY a Python name "
                            f"(e.g. --arch-arg model=tiny --arch-arg widths=[64,64])")
        if key in out:
            raise UserError(f"--arch-arg {key} is given twice")
        try:
            out[key] = json.loads(text)
        except json.JSONDecodeError:
            out[key] = text
    return out



@contextlib.contextmanager
def merge_warnings():
    """Show merge warnings as one line each on stderr (not Python's warning format)."""
    import warnings

    from ibtools.merge import MergeWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MergeWarning)
        yield
    for w in caught:
        if issubclass(w.category, MergeWarning):
            click.echo(f"warning: {w.message}", err=True)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@click.command("merge")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True,
              help="Directory for the merged results.csv/json and config.json.")
@click.option("--on-duplicate", type=click.Choice(["warn", "error"]), default="warn",
              show_default=True, help="A row two runs both hold: keep the first run's with a "
              "warning, or refuse.")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@click.option("--report/--no-report", default=False, show_default=True,
              help="Also write report.html and report.pdf into --out.")
def merge_command(runs, out_dir, on_duplicate, overwrite, report):
    """Merge the results of several run directories (or results files) RUNS into one table
    in --out: rows keep their run (column 'run'), layers keep each model's order across
    runs, and a row two runs both hold is kept once.
    """
    from ibtools.merge import write_merged

    with merge_warnings():
        table, paths = write_merged(list(runs), out_dir, on_duplicate=on_duplicate,
                                    overwrite=overwrite)
    click.echo(f"merged {len(table)} rows from {len(runs)} runs: {paths['csv']}")
    if report:
        from ibtools.cli import _write_report

        _write_report(out_dir)
