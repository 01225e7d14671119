"""The ``ibtools`` command line: analyze, report, estimate, demo.  Thin over the Python API.

Exit codes: 0 success, 2 a problem with what the user gave (paths, names, settings),
1 a failure while running (an unexpected error, a bug, also prints its traceback).
"""

from __future__ import annotations

import functools
import json
import sys
import traceback
from pathlib import Path

import click

import ibtools
from ibtools.cli_config import read_config as _read_config
from ibtools.cli_helpers import UserError, cli_wording, merge_command
from ibtools.cli_helpers import arch_args as _arch_args
from ibtools.cli_helpers import cwd_importable as _cwd_importable
from ibtools.cli_helpers import merge_warnings as _merge_warnings
from ibtools.errors import EstimatorFailed, IbtoolsError, InputError


def _user_errors(fn):
    """Decide a command's exit by what its error means (:mod:`ibtools.errors`), not by its
    Python type: ibtools' own errors (bad arguments, settings, paths and files the user gave)
    and a missing file or directory are one clear line and exit code 2.  A missing optional
    package or another operating-system error is a failure, exit code 1, in one line.  Any
    other exception (a plain ``TypeError``, ``KeyError``, ``AttributeError``, ``ValueError``)
    is a bug: its traceback is shown and the exit code is 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except click.ClickException:
            raise
        except (IbtoolsError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise UserError(cli_wording(str(exc))) from exc
        except KeyboardInterrupt:
            click.echo("interrupted; results written so far are kept (rerun to resume)", err=True)
            sys.exit(130)
        except (ImportError, OSError) as exc:
            click.echo(f"Error: ibtools failed: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)
        except Exception:  # noqa: BLE001 - a bug: show where it happened
            click.echo("Error: ibtools failed with an unexpected error (a bug; please report "
                       "it with this traceback):", err=True)
            click.echo(traceback.format_exc(), err=True, nl=False)
            sys.exit(1)

    return wrapper


def _check_device(ctx, param, value):
    """--device: checked before any work, so a bad name is a user error (exit 2) that names
    the option and what is accepted, not a failure from deep inside torch."""
    from ibtools.estimators.base import resolve_device

    try:
        if ctx.params.get("scheduler"):  # the cluster's workers have the devices, not this one
            from ibtools.distributed import cluster_device

            cluster_device(value)
        else:
            resolve_device(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc).replace("None (the inputs' device), ", "")) from exc
    return value


def _print_summary(table, limit: int = 40) -> None:
    if table is None or len(table) == 0:
        click.echo("no rows")
        return
    cols = [c for c in ("checkpoint", "norm", "lam", "layer", "setting", "i_xt", "i_prev_t",
                        "i_ty", "beta", "ib_value") if c in table.columns]
    view = table[cols].copy()
    # parent folder + file: runs often share file names (step_000100.pt)
    view["checkpoint"] = view["checkpoint"].map(lambda s: "/".join(Path(str(s)).parts[-2:]))
    with_pd = view.head(limit).to_string(index=False, float_format=lambda v: f"{v:.3f}")
    click.echo(with_pd)
    if len(view) > limit:
        click.echo(f"... {len(view) - limit} more rows in results.csv")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(ibtools.__version__, prog_name="ibtools")
def main():
    """ibtools: information-bottleneck analysis of PyTorch models.

    \b
    Quick start:
      ibtools demo                      train tiny models, analyze them, write a report
      ibtools analyze CKPT... --out DIR  IB numbers per layer for checkpoints
      ibtools report DIR                 HTML and PDF report of a results directory
      ibtools estimate A.npy B.npy       mutual information of two arrays
    """


@main.command()
@click.argument("checkpoints", nargs=-1)
@click.option("--arch", help="Architecture for plain state_dicts: ibtools:mlp, hf:DIR, "
              "package.module:factory (ibtools checkpoints carry their own).")
@click.option("--data", default="digits", show_default=True,
              help="digits | text:PATH | npz:PATH | package.module:function")
@click.option("--layers", "layers", multiple=True,
              help="Layer name, dotted glob (blocks.*.ln_1; ** crosses dots), module type, "
              "or the group 'norms'/'blocks'; fx:NODE for a functional op of the model's "
              "torch.fx trace (fx:relu, fx:max_pool2d_*); repeatable. Default: every block "
              "output.")
@click.option("--estimator", "estimators", multiple=True,
              help="METHOD[:SETTING=VALUE,...], e.g. kde:noise_var=0.1; repeatable (a sweep).")
@click.option("--beta", "betas", multiple=True, type=float, help="IB trade-off; repeatable.")
@click.option("--noise-std", "noise_std", multiple=True, type=float,
              help="Read every measured layer through a Gaussian channel T + N(0, S^2 I) "
              "(finite MI at S instead of ln n); repeatable (a sweep). mixture/kde take "
              "noise_var = S^2, other estimators sampled seeded noise.")
@click.option("--noise-scale", "noise_scale", type=click.Choice(["absolute", "layer"]),
              default="absolute", show_default=True,
              help="Units of --noise-std: the layer's own, or its scale on the sample ('layer': "
              "S times each layer's RMS coordinate deviation, so a layer and a multiple of it "
              "read alike).")
@click.option("--noise-paths", "noise_paths", type=int, default=8, show_default=True,
              help="Noise paths per input from which a network trained with noise (noise_std "
              "in its blocks) has h(T|X) estimated for the mixture estimator's rows.")
@click.option("--reference", type=click.Choice(["input", "previous"]), default="input",
              show_default=True, help="Compress against I(X;T) or I(T_prev;T).")
@click.option("--max-samples", type=int, default=2000, show_default=True,
              help="Rows per layer (tokens for language models).")
@click.option("--pool", type=click.Choice(["mean", "last"]), default=None,
              help="Pool token rows into one per sequence; 'mean' also averages conv maps "
              "(B, C, H, W) over space, one value per channel (wide conv layers).")
@click.option("--reduce", "reduce", multiple=True, metavar="[GLOB=]RULE",
              help="Reduce conv maps / wide layers before estimation: pool (mean over space, "
              "per channel), pool:max, channels (mean over channels), project:K (seeded "
              "random projection to K dims), none; GLOB=RULE for matching layers "
              "(conv*=pool), repeatable; a bare RULE applies to the other layers.")
@click.option("--ci/--no-ci", default=False, help="Intervals from each estimator.")
@click.option("--split", default="test", show_default=True,
              help="Which split of the data source to analyze (test | train).")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto | cpu | cuda[:N] | mps")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", "out_dir", default="ibtools-results", show_default=True,
              type=click.Path(file_okay=False), help="Run directory (resumable).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False),
              help="JSON/TOML file with the same settings; command-line options win.")
@click.option("--overwrite", is_flag=True, help="Replace results of other settings in --out.")
@click.option("--threads", default="auto", show_default=True,
              help="torch CPU threads during the analysis: auto (1 for small problems) or N.")
@click.option("--trust-pickle", is_flag=True,
              help="Allow checkpoints that are pickled modules (runs code from the file).")
@click.option("--trust-code", is_flag=True,
              help="Allow a checkpoint (or --config) to name an architecture or data factory "
              "other than ibtools' own models (imports and runs that code).")
@click.option("--report/--no-report", default=True, show_default=True,
              help="Write report.html and report.pdf next to the results.")
@click.option("--progress/--no-progress", default=None,
              help="Progress bars (default: only on a terminal).")
@click.option("--arch-arg", "arch_args", multiple=True, metavar="KEY=VALUE",
              help="Keyword argument of the --arch factory, repeatable; VALUE is read as JSON "
              "when it parses (3, true, [64,64]), else as text (tiny).")
@click.option("--strict/--no-strict", default=True, show_default=True,
              help="Refuse checkpoints whose keys do not all match the architecture; "
              "--no-strict loads what matches and names the keys left out (e.g. tied weights).")
@click.option("--memory-budget", default="auto", show_default=True,
              help="RAM the captured activations may take (e.g. 2GiB; auto: a quarter of the "
              "RAM); above it they are spilled to disk and memory-mapped.")
@click.option("--spill-dir", type=click.Path(file_okay=False),
              help="Always spill captured activations under this directory (removed per "
              "checkpoint when done).")
@click.option("--batch-size", type=int, default=64, show_default=True,
              help="Samples per forward pass while capturing.")
@click.option("--workers", type=int, default=None,
              help="Run on a local Dask cluster of N processes, one thread each (needs "
              "ibtools[dask]); the table is the serial one.")
@click.option("--scheduler", default=None, is_eager=True, metavar="ADDRESS",
              help="Run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); "
              "its workers must read the checkpoint paths.")
@click.pass_context
@_user_errors
def analyze(ctx, checkpoints, arch, data, layers, estimators, betas, reference, max_samples,
            pool, ci, split, device, seed, out_dir, config_file, overwrite, threads, trust_pickle,
            trust_code, report, progress, arch_args, strict, memory_budget, spill_dir,
            batch_size, workers, scheduler, noise_std, reduce, noise_paths, noise_scale):
    """Estimate I(X;T), I(T_prev;T), I(T;Y) and IB values per layer of CHECKPOINTS.

    Writes results.csv, results.json and config.json into --out after every step; rerunning
    into the same directory resumes.  A Hugging Face directory is both the checkpoint and
    --arch hf:DIR.
    """
    from ibtools.probes.reduce import from_cli as reduce_from_cli

    opts = {"checkpoints": list(checkpoints), "arch": arch, "data": data,
            "layers": list(layers) or None, "estimators": list(estimators) or None,
            "betas": list(betas) or None, "reference": reference, "max_samples": max_samples,
            "pool": pool, "ci": "auto" if ci else None, "split": split, "device": device,
            "seed": seed, "noise_std": list(noise_std) or None,
            "reduce": reduce_from_cli(reduce), "noise_paths": noise_paths,
            "noise_scale": noise_scale}
    if config_file:
        conf = _read_config(config_file)
        unknown = sorted(set(conf) - set(opts))
        if unknown:
            raise UserError(f"--config {config_file}: unknown key(s) {unknown}; accepted: "
                            f"{sorted(opts)}")
        source = {"checkpoints": "checkpoints", "layers": "layers", "estimators": "estimators",
                  "betas": "betas", "ci": "ci", "noise_std": "noise_std", "reduce": "reduce"}
        for key, value in conf.items():
            param = source.get(key, key)
            given = opts[key] not in (None, []) if key in source else (
                ctx.get_parameter_source(param) != click.core.ParameterSource.DEFAULT)
            if not given:
                opts[key] = value
                if key in ("arch", "data") and not trust_code:
                    _code_from_file(key, value, config_file)
    if not opts["checkpoints"]:
        raise UserError("no checkpoints given: ibtools analyze CKPT [CKPT...] (or 'checkpoints' "
                        "in --config)")
    for c in opts["checkpoints"]:
        if not Path(c).exists():
            raise UserError(f"checkpoint {c!r} does not exist")
    arch_kwargs = _arch_args(arch_args)
    if arch_kwargs and not opts["arch"]:
        raise UserError("--arch-arg needs --arch (the factory the arguments are for)")
    memory = None if memory_budget.lower() == "none" else memory_budget
    from ibtools.distributed import cli_executor

    with _cwd_importable(opts["arch"]), _cwd_importable(opts["data"]), \
            cli_executor(workers, scheduler, opts["device"]) as executor:
        table = ibtools.analyze(opts.pop("checkpoints"), betas=opts.pop("betas") or [0.1],
                                out_dir=out_dir, overwrite=overwrite, progress=progress,
                                trust_pickle=trust_pickle, trust_code=trust_code,
                                threads=_threads(threads), arch_kwargs=arch_kwargs or None,
                                strict=strict, memory_budget=memory, spill_dir=spill_dir,
                                batch_size=batch_size, executor=executor, **opts)
    _print_summary(table)
    click.echo(f"results: {Path(out_dir) / 'results.csv'}")
    if report:
        _write_report(out_dir)


def _code_from_file(key: str, value, config_file: str) -> None:
    """Refuse an ``arch``/``data`` read from --config that names code to import: the file,
    not the user, would choose it.  The same value on the command line is the user's."""
    from ibtools.probes.architectures import stored_arch

    where = f"--config {config_file}"
    if key == "arch" and value is not None:
        stored_arch(value, where=where)
    elif key == "data" and isinstance(value, str):
        scheme, _, rest = value.partition(":")
        if rest and scheme not in ("text", "npz"):
            raise UserError(f"{where} names the data source {value!r}, a function to import "
                            f"and call; a file may not choose code to run, so nothing was "
                            f"imported.  Name it yourself (--data '{value}') or pass "
                            f"--trust-code.")


def _threads(value: str):
    if value == "auto":
        return "auto"
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--threads {value!r} is not accepted; use auto or a positive integer") from None


def _write_report(out_dir, **kwargs):
    from ibtools.reports import write_report

    paths = write_report(out_dir, **kwargs)
    for kind, path in paths.items():
        click.echo(f"{kind}: {path}")
    return paths


@main.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--html", default="report.html", show_default=True,
              help="HTML file name (inside RUN_DIR unless a path).")
@click.option("--pdf", default="report.pdf", show_default=True, help="PDF file name.")
@click.option("--no-pdf", is_flag=True, help="Skip the PDF.")
@click.option("--bits", is_flag=True, help="Show values in bits instead of nats.")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --html/--pdf file that no ibtools report wrote (the "
              "run's results, config and journal are never replaced).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False),
              help="With several RUN_DIRs: the directory for the merged table and the report "
              "(as `ibtools merge RUN_DIR... --out DIR`).")
@_user_errors
def report(run_dirs, html, pdf, no_pdf, bits, overwrite, out_dir):
    """Write an HTML and a PDF report of the results in RUN_DIR (or a results CSV/JSON).

    Several RUN_DIRs are merged first into --out (see `ibtools merge`), so runs with other
    layer sets, estimators or architectures land in one report.
    """
    units = "bits" if bits else "nats"
    if len(run_dirs) == 1 and out_dir is None:
        _write_report(run_dirs[0], html=html, pdf=None if no_pdf else pdf, units=units,
                      overwrite=overwrite)
        return
    if out_dir is None:
        raise UserError(f"{len(run_dirs)} runs given: add --out DIR for the merged table and "
                        f"its report")
    from ibtools.merge import write_merged

    with _merge_warnings():
        table, paths = write_merged(list(run_dirs), out_dir, overwrite=overwrite)
    click.echo(f"merged {len(table)} rows from {len(run_dirs)} runs: {paths['csv']}")
    _write_report(out_dir, html=html, pdf=None if no_pdf else pdf, units=units,
                  overwrite=overwrite)


def _load_array(spec: str):
    """Read FILE (.npy, .npz[:KEY], .csv, .txt, .pt) as an array."""
    import numpy as np

    path, _, key = spec.partition("::") if "::" in spec else (spec, "", "")
    p = Path(path)
    if not p.exists():
        raise UserError(f"array file {path!r} does not exist")
    suffix = p.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(p, allow_pickle=False)
        if suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                names = list(z.files)
                if key:
                    if key not in names:
                        raise UserError(f"{path}: no array {key!r}; it holds {names}")
                    return z[key]
                if len(names) != 1:
                    raise UserError(f"{path} holds {names}; pick one as {path}::NAME")
                return z[names[0]]
        if suffix in (".csv", ".txt", ".tsv"):
            import pandas as pd

            sep = "\t" if suffix == ".tsv" else None
            frame = pd.read_csv(p, sep=sep, engine="python")
            if all(str(c).replace(".", "").replace("-", "").isdigit() for c in frame.columns):
                frame = pd.read_csv(p, sep=sep, engine="python", header=None)
            return frame.to_numpy()
        if suffix in (".pt", ".pth"):
            import torch

            obj = torch.load(p, map_location="cpu", weights_only=True)
            if not isinstance(obj, torch.Tensor):
                raise UserError(f"{path} holds a {type(obj).__name__}, not a tensor")
            return obj
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"could not read {path}: {exc}") from exc
    raise UserError(f"{path}: suffix {suffix!r} is not one of .npy .npz .csv .txt .tsv .pt")


@main.command()
@click.argument("a")
@click.argument("b", required=False)
@click.option("--method", default="auto", show_default=True,
              help=f"One of {', '.join(ibtools.METHODS)}; 'auto' picks the estimator from "
                   f"the data (--json shows which, in details.auto).")
@click.option("--set", "settings", multiple=True, metavar="SETTING=VALUE",
              help="Estimator setting, repeatable (k=5, noise_var=0.1, transform=copula; "
              "kde on two continuous arrays needs deterministic=true: B a function of A).")
@click.option("--discrete-b", is_flag=True, help="Treat B as class ids.")
@click.option("--bits", is_flag=True, help="Print bits instead of nats.")
@click.option("--json", "as_json", is_flag=True, help="Print the full results as JSON.")
@_user_errors
def estimate(a, b, method, settings, discrete_b, bits, as_json):
    """Mutual information I(A;B) and the entropies of arrays A and B (files: .npy, .npz,
    .csv, .pt; pick an array of an .npz as FILE::NAME).  With only A, its entropy."""
    from ibtools.estimators.spec import parse_estimator_spec

    spec = parse_estimator_spec(f"{method}:{','.join(settings)}" if settings else method)
    est = spec.build()
    xa = _load_array(a)
    out = {}
    if b is not None:
        xb = _load_array(b)
        out["I(A;B)"] = est.mutual_information(xa, xb, discrete_y=True if discrete_b else None)
    for name, arr, disc in (("H(A)", xa, None), ("H(B)", None if b is None else xb,
                                                  True if discrete_b else None)):
        if arr is None:
            continue
        try:
            out[name] = est.entropy(arr, discrete=disc)
        except (InputError, EstimatorFailed) as exc:  # e.g. no entropy from this method
            out[name] = str(exc)
    if as_json:
        click.echo(json.dumps({k: (v.to_dict() if hasattr(v, "to_dict") else {"error": v})
                               for k, v in out.items()}, indent=2))
        return
    unit = "bits" if bits else "nats"
    for name, r in out.items():
        if isinstance(r, str):
            click.echo(f"{name:7s} not available with {method}: {r}")
            continue
        val = r.bits if bits else r.value
        click.echo(f"{name:7s} = {val:.4f} {unit}  ({r.method}, n={r.n}, dims={list(r.dims)}, "
                   f"{r.seconds:.2f} s)")
        for flag in r.flags:
            click.echo(f"        note: {flag}")


@main.command()
@click.option("--out", "out_dir", default="ibtools-demo", show_default=True,
              type=click.Path(file_okay=False))
@click.option("--quick", is_flag=True, help="Smaller models and fewer settings.")
@click.option("--device", default="auto", show_default=True, callback=_check_device,
              help="auto | cpu | cuda[:N] | mps")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--report/--no-report", default=True, show_default=True)
@click.option("--progress/--no-progress", default=None)
@_user_errors
def demo(out_dir, quick, device, seed, report, progress):
    """Train tiny MLPs on scikit-learn digits (LayerNorm baseline and IBNorm-S/L/T at several
    lambda), analyze their checkpoints with several estimators, and write the report."""
    from ibtools.demo import run_demo

    table = run_demo(out_dir, quick=quick, device=device, seed=seed, progress=progress,
                     echo=click.echo)
    _print_summary(table[table["layer_index"] == table["layer_index"].max()], limit=30)
    click.echo(f"results: {Path(out_dir) / 'results.csv'}")
    if report:
        _write_report(out_dir)


# `ibtools merge`, defined in ibtools.cli_helpers, with this module's error handling
merge_command.callback = _user_errors(merge_command.callback)
main.add_command(merge_command)


if __name__ == "__main__":  # pragma: no cover
    main()
