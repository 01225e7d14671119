"""What a report says, built once and rendered twice (HTML and PDF), so both carry the
same summary, figures, caveats, settings and table."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from matplotlib.figure import Figure

from ibtools import results as results_io
from ibtools.errors import InputTypeError
from ibtools.registry import insert_ordered
from ibtools.reports.plots import (
    plot_estimator_agreement,
    plot_ib_across_lam,
    plot_ib_across_layers,
    plot_information_plane,
)
from ibtools.reports.summary import collect_caveats, describe_run, summarize
from ibtools.reports.table import (
    aggregate_seeds,
    check_units,
    prepare_table,
    select_step,
)

DEFAULT_TITLE = "Information-bottleneck analysis"

#: Columns of the PDF's optional full-table pages (a page cannot hold all of them; the
#: HTML does).
PDF_TABLE_COLUMNS = ("variant", "seed", "step", "layer", "setting_label", "i_xt", "i_ty",
                     "i_prev_t", "ib_value", "ci_low", "ci_high", "n_flags")


@dataclass
class ReportFigure:
    """One figure of a report with the words that go with it."""

    key: str
    title: str
    caption: str
    figure: Figure


@dataclass(frozen=True)
class FigureSpec:
    """One entry of the report's figure registry: when it applies to a prepared table, its
    caption (which may depend on the table) and how to draw it.  Adding a figure to every
    report is one :func:`register_figure` call (or one entry in :data:`FIGURES`)."""

    key: str
    title: str
    applies: Callable[[pd.DataFrame], bool]
    caption: Callable[[pd.DataFrame], str]
    make: Callable[[pd.DataFrame, str, object], Figure]


def _plane_caption(prepared: pd.DataFrame) -> str:
    single_step = prepared["progress"].nunique() <= 1
    return ("One panel per model variant and estimator setting; "
            + ("each layer has its own colour and marker, and a line joins the layers in "
               "order. " if single_step else
               "markers tell the layers apart, colour gives the training step. ")
            + "The dashed line is ln n, the most I(X;T) a sample of n points can show: "
            "points on it measure the estimator's resolution, not compression.")


def _always(prepared: pd.DataFrame) -> bool:
    return True


#: The figures of a report, in order (a list: :func:`register_figure` adds to it).
FIGURES = [
    FigureSpec("information-plane", "Information plane", _always, _plane_caption,
               lambda t, units, step: plot_information_plane(t, units=units)),
    FigureSpec("ib-across-layers", "IB value across layers", _always,
               lambda t: "One line per model variant (norm kind and λ), one panel per "
                         "estimator setting; lines are means over seeds, bands span the "
                         "seeds' intervals.",
               lambda t, units, step: plot_ib_across_layers(t, units=units, step=step)),
    FigureSpec("ib-across-lam", "IB value across λ",
               lambda t: len(t["lam"].fillna(0.0).unique()) > 1,
               lambda t: "One line per layer; hollow markers and dotted level lines mark the "
                         "baseline (λ = 0 or a plain norm), so a gain from compression reads "
                         "as a line above its dotted level.",
               lambda t, units, step: plot_ib_across_lam(t, units=units, step=step)),
    # with one variant every panel would say "nothing to rank"
    FigureSpec("estimator-agreement", "Estimator agreement",
               lambda t: t["variant"].nunique() > 1,
               lambda t: "The IB value of each variant under each estimator setting, one "
                         "panel per layer; crossing lines mean the ranking of the variants "
                         "depends on the estimator. Each panel's title gives the verdict.",
               lambda t, units, step: plot_estimator_agreement(t, units=units, step=step)),
]


def register_figure(spec: FigureSpec, *, before: str | None = None) -> FigureSpec:
    """Add ``spec`` to every report's figures: before the figure whose key is ``before``,
    else last.  A figure with the same key is replaced.  ``spec.make(prepared, units, step)``
    receives the prepared table (one row per result, units converted, ``variant`` and
    ``progress`` columns added) and returns a matplotlib Figure."""
    if not isinstance(spec, FigureSpec):
        raise InputTypeError(f"spec must be a FigureSpec (key, title, applies, caption, make); "
                             f"got {type(spec).__name__}")
    return insert_ordered(FIGURES, spec, lambda f: f.key, before=before, what="figure")


@dataclass
class ReportContent:
    """Everything a report shows; renderers only lay it out."""

    title: str
    units: str
    summary: dict
    caveats: list
    run: list
    config: dict
    figures: list = field(default_factory=list)
    table: pd.DataFrame | None = None
    columns: list = field(default_factory=list)
    final: pd.DataFrame | None = None

    @property
    def config_text(self) -> str:
        """The configuration as sorted, indented JSON (empty when none was given)."""
        if not self.config:
            return ""
        return json.dumps(self.config, indent=2, sort_keys=True, default=str)


def _check_mapping(value, name: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputTypeError(f"{name} must be a dict (or None); got {type(value).__name__}")
    return value


def build_report_content(table, *, config=None, environment=None, units: str = "nats",
                         title: str | None = None, step="last") -> ReportContent:
    """Validate the table and build the summary, figures, caveats and run description.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (columns of :mod:`ibtools.results`).
    config : dict, optional
        The run's configuration, shown verbatim and searched for the environment.
    environment : dict, optional
        Versions, device, date... that produced the table.
    units : {"nats", "bits"}
        Unit of every number shown.
    title : str, optional
        Report title; default ``config["title"]`` or "Information-bottleneck analysis".
    step : "last" or number
        Checkpoint that the summary and the per-layer figures compare.

    Returns
    -------
    ReportContent
    """
    units = check_units(units)
    config = _check_mapping(config, "config")
    environment = _check_mapping(environment, "environment")
    if title is not None and not isinstance(title, str):
        raise InputTypeError(f"title must be a string; got {type(title).__name__}")
    prepared = prepare_table(table, units)
    prepared["n_flags"] = prepared["flag_list"].map(len)
    figures = [ReportFigure(spec.key, spec.title, spec.caption(prepared),
                            spec.make(prepared, units, step))
               for spec in FIGURES if spec.applies(prepared)]
    for fig in figures:
        # Lay out once and freeze: constrained layout costs about as much as a draw, and
        # each figure is saved twice (SVG and PDF) with the same geometry.
        fig.figure.draw_without_rendering()
        fig.figure.set_layout_engine("none")
    title = title or str(config.get("title") or DEFAULT_TITLE)
    # the table's own columns, with a pre-rename "flags" under its new name
    columns = [c for c in results_io.rename_old_columns(table.head(0)).columns]
    return ReportContent(title=title, units=units, summary=summarize(prepared, step),
                         caveats=collect_caveats(prepared),
                         run=describe_run(prepared, config, environment), config=config,
                         figures=figures, table=prepared, columns=columns,
                         final=seed_means(prepared, step))


def seed_means(prepared: pd.DataFrame, step="last") -> pd.DataFrame:
    """The compared checkpoint as one row per (variant, layer, setting): seed means of
    I(X;T) (or I(T_prev;T)), I(T;Y) and the IB value, with the IB band and seed count.

    This is the table both reports print in full; the per-seed, per-step rows stay in the
    HTML's results table and in results.csv.
    """
    final = select_step(prepared, step).copy()
    final["x_value"] = final["i_xt"].where(final["x_quantity"] == "i_xt", final["i_prev_t"])
    keys = ["variant_order", "variant", "layer_index", "layer", "setting_label"]
    out = aggregate_seeds(final, keys)
    for column in ("x_value", "i_ty"):
        means = final.groupby(keys, sort=False, dropna=False)[column].mean().reset_index()
        out = out.merge(means, on=keys, how="left")
    out = out.sort_values(["layer_index", "setting_label", "variant_order"], kind="mergesort")
    out = out.rename(columns={"setting_label": "setting", "x_value": "I(X;T)",
                              "i_ty": "I(T;Y)", "ib_value": "IB value",
                              "band_low": "IB low", "band_high": "IB high",
                              "n_seeds": "seeds"})
    return out[["layer", "setting", "variant", "seeds", "I(X;T)", "I(T;Y)", "IB value",
                "IB low", "IB high"]].reset_index(drop=True)
