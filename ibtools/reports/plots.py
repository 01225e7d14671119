"""Figures of a results table: information plane, IB value across layers and across
lambda, and estimator agreement.

Every function takes the results table (or a filtered view of it), returns a
:class:`matplotlib.figure.Figure` built without pyplot (no global state, safe in scripts and
notebooks; a :class:`~ibtools.reports.figure.NotebookFigure`, so it displays in a fresh
Jupyter kernel without ``%matplotlib inline``), states the unit on every information axis, and uses colour-blind-safe
colours: the Okabe-Ito palette for categories and ``cividis`` for training time.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ibtools.errors import InputError
from ibtools.reports.figure import NotebookFigure
from ibtools.reports.ranking import TIE_TOLERANCE_NATS, rank_variants
from ibtools.reports.table import (
    LN2,
    aggregate_seeds,
    check_units,
    ordered,
    prepare_table,
    quantity_label,
    select_step,
)

#: Okabe & Ito (2008) colours, distinguishable under the common colour-vision deficiencies;
#: yellow last because it is faint on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#000000",
           "#F0E442")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
STEP_CMAP = "cividis"
_PANEL_W, _PANEL_H = 3.7, 3.0


def _choose(values, wanted, name: str) -> list:
    present = ordered(values)
    if wanted is None:
        return present
    if isinstance(wanted, str):
        wanted = [wanted]
    unknown = [w for w in wanted if w not in present]
    if unknown:
        raise InputError(f"{name}={unknown!r} not in the table; present: {present}")
    return [p for p in present if p in wanted]


def _grid(n_panels: int, max_cols: int, extra_w: float = 0.0, extra_h: float = 0.6):
    cols = min(n_panels, max_cols)
    rows = math.ceil(n_panels / cols)
    fig = NotebookFigure(figsize=(_PANEL_W * cols + extra_w, _PANEL_H * rows + extra_h),
                         layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def legend_columns(fig: Figure, labels, most: int) -> int:
    """Legend columns that fit the figure's width (at 8 pt, about 0.075 in a character plus
    the marker and padding), so a legend below the panels is never clipped at the sides."""
    labels = [str(label) for label in labels]
    if not labels:
        return 1
    entry = 0.5 + 0.075 * max(len(label) for label in labels)
    return int(max(1, min(len(labels), most, fig.get_figwidth() // entry)))


def _layer_styles(layers) -> dict:
    """A (colour, marker) pair per layer, distinct for up to 56 layers (7 colours without
    the faint yellow, 8 markers: the pair repeats only after lcm(7, 8) layers)."""
    return {layer: (PALETTE[i % 7], MARKERS[i % len(MARKERS)]) for i, layer in enumerate(layers)}


def _colour_map(labels) -> dict:
    return {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}


def _setup(table, units):
    units = check_units(units)
    return prepare_table(table, units), units


def _beta_text(frame) -> str:
    betas = sorted(frame["beta"].dropna().unique().tolist())
    return "β=" + ", ".join(f"{b:g}" for b in betas) if betas else "β not recorded"


def _seed_text(frame) -> str:
    n = frame["seed"].nunique()
    return f"mean over {n} seeds" if n > 1 else "one seed"


def plot_information_plane(table, *, units: str = "nats", settings=None, variants=None,
                           layers=None, seed=None, x: str = "auto") -> Figure:
    """Information plane: I(X;T) (or I(T_prev;T)) against I(T;Y), one trajectory per layer.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (or a filtered view of it).
    units : {"nats", "bits"}
        Unit of both axes.
    settings, variants, layers : str or list of str, optional
        Restrict to these estimator settings (``setting`` labels), model variants (e.g.
        ``"ib-T, λ=1"``) and layers; default all.
    seed : int, optional
        Plot this seed only; default the mean over seeds.
    x : {"auto", "i_xt", "i_prev_t"}
        Column on the x axis; ``"auto"`` reads I(T_prev;T) for layer-wise rows and I(X;T)
        otherwise.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per (setting, variant); markers tell layers apart, colour gives the
        training step (colour bar); the dashed line marks ln n, the most a sample of n
        points can show for I(X;T).  With one checkpoint (a pretrained model) there is no
        training time: each layer has its own colour and marker, a line joins the layers
        in order, and one variant's settings are laid out in up to three columns.
    """
    prepared, units = _setup(table, units)
    if x not in ("auto", "i_xt", "i_prev_t"):
        raise InputError(f"x={x!r} is not accepted; use 'auto', 'i_xt' or 'i_prev_t'")
    if seed is not None:
        if seed not in set(prepared["seed"].dropna()):
            raise InputError(f"seed={seed!r} not in the table; seeds present: "
                             f"{sorted(prepared['seed'].dropna().unique().tolist())}")
        prepared = prepared[prepared["seed"] == seed]
    chosen_settings = _choose(prepared["setting_label"], settings, "settings")
    chosen_variants = _choose(prepared["variant"], variants, "variants")
    chosen_layers = _choose(prepared["layer"], layers, "layers")
    frame = prepared[prepared["setting_label"].isin(chosen_settings)
                     & prepared["variant"].isin(chosen_variants)
                     & prepared["layer"].isin(chosen_layers)].copy()
    if x != "auto":
        frame["x_quantity"] = x
    frame["x_value"] = np.where(frame["x_quantity"] == "i_prev_t", frame["i_prev_t"], frame["i_xt"])
    keys = ["setting_label", "variant", "layer", "layer_index", "progress", "x_quantity"]
    points = aggregate_seeds(frame, keys, value="x_value", low="x_value", high="x_value")
    points = points.merge(aggregate_seeds(frame, keys, value="i_ty", low="i_ty", high="i_ty")
                          [keys + ["i_ty"]], on=keys)

    progress = frame["progress"]
    norm = Normalize(progress.min(), progress.max() if progress.max() > progress.min()
                     else progress.min() + 1)
    cmap = STEP_CMAP
    scale = 1.0 if units == "nats" else 1.0 / LN2
    panels = [(s, v) for s in chosen_settings for v in chosen_variants]
    # one checkpoint (a pretrained model): no training time to colour, so each layer gets
    # its own colour and marker and a line joins the layers in order
    single = frame["progress"].nunique() <= 1
    max_cols = len(chosen_variants) if len(chosen_variants) > 1 else min(3, len(panels))
    fig, axes = _grid(len(panels), max_cols=max_cols, extra_w=0.0 if single else 1.0)
    markers = {layer: MARKERS[i % len(MARKERS)] for i, layer in enumerate(chosen_layers)}
    styles = _layer_styles(chosen_layers)
    for ax, (setting, variant) in zip(axes, panels):
        panel = points[(points["setting_label"] == setting) & (points["variant"] == variant)]
        if single:
            _layer_path(ax, panel, styles)
        for layer in ([] if single else chosen_layers):
            path = panel[panel["layer"] == layer].sort_values("progress")
            if path.empty:
                continue
            xy = path[["x_value", "i_ty"]].to_numpy()
            if len(xy) > 1:
                segments = np.stack([xy[:-1], xy[1:]], axis=1)
                mid = (path["progress"].to_numpy()[:-1] + path["progress"].to_numpy()[1:]) / 2
                ax.add_collection(LineCollection(segments, cmap=cmap, norm=norm, array=mid,
                                                 linewidths=1.6, zorder=1))
            ax.scatter(xy[:, 0], xy[:, 1], c=path["progress"], cmap=cmap, norm=norm,
                       marker=markers[layer], s=38, edgecolors="#333333", linewidths=0.6,
                       zorder=2)
        n_max = frame.loc[(frame["setting_label"] == setting)
                          & (frame["variant"] == variant), "n_samples"].max()
        if np.isfinite(n_max) and n_max > 1:
            ax.axvline(math.log(n_max) * scale, color="#777777", linestyle="--", linewidth=0.9)
            ax.annotate("ln n", (math.log(n_max) * scale, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(-3, -10), textcoords="offset points", ha="right",
                        fontsize=7, color="#555555")
        quantity = panel["x_quantity"].iloc[0] if not panel.empty else "i_xt"
        ax.set_xlabel(quantity_label(quantity, units))
        ax.set_ylabel(quantity_label("i_ty", units))
        ax.set_title(f"{variant}\n{setting}", fontsize=9)
        ax.autoscale_view()
        ax.grid(True, linewidth=0.4, alpha=0.5)
    if single:
        handles = [Line2D([], [], linestyle="", marker=styles[layer][1], color=styles[layer][0],
                          markeredgecolor="#333333", label=layer) for layer in chosen_layers]
    else:
        handles = [Line2D([], [], linestyle="", marker=markers[layer], color="#999999",
                          markeredgecolor="#333333", label=layer) for layer in chosen_layers]
    fig.legend(handles=handles, loc="outside lower center",
               ncols=legend_columns(fig, chosen_layers, 6), title="layer", fontsize=8,
               title_fontsize=8)
    if not single:
        step_name = "training step" if frame["step"].notna().all() else "checkpoint order"
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=axes, label=step_name,
                     shrink=0.8)
    fig.suptitle(f"Information plane ({_seed_text(frame)}; units: {units})", fontsize=11)
    return fig


def _layer_path(ax, panel, styles) -> None:
    """One checkpoint's layers as points joined in layer order, each in its own style."""
    path = panel.sort_values("layer_index")
    xy = path[["x_value", "i_ty"]].to_numpy(dtype=float)
    ax.plot(xy[:, 0], xy[:, 1], color="#999999", linewidth=1.0, zorder=1)
    for (x, y), layer in zip(xy, path["layer"]):
        colour, marker = styles[layer]
        ax.scatter([x], [y], color=colour, marker=marker, s=42, edgecolors="#333333",
                   linewidths=0.6, zorder=2)


def _variant_legend(fig: Figure, ax) -> None:
    """One legend of the model variants below the panels (they share colours)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center",
               ncols=legend_columns(fig, labels, 5),
               title="model variant", fontsize=8, title_fontsize=8)


def plot_ib_across_layers(table, *, units: str = "nats", step="last", settings=None,
                          variants=None) -> Figure:
    """IB value per layer, one line per model variant (norm kind and lambda), one panel per
    estimator setting.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (or a filtered view).
    units : {"nats", "bits"}
    step : "last" or number
        Checkpoint to show; ``"last"`` is each variant's latest.
    settings, variants : str or list of str, optional
        Restrict to these estimator settings and variants.

    Returns
    -------
    matplotlib.figure.Figure
        Lines are means over seeds; bands span the seeds' intervals (see
        :func:`ibtools.reports.table.aggregate_seeds`).
    """
    prepared, units = _setup(table, units)
    frame = select_step(prepared, step)
    chosen_settings = _choose(frame["setting_label"], settings, "settings")
    chosen_variants = _choose(frame["variant"], variants, "variants")
    frame = frame[frame["setting_label"].isin(chosen_settings)
                  & frame["variant"].isin(chosen_variants)]
    agg = aggregate_seeds(frame, ["setting_label", "variant", "layer", "layer_index"])
    colours = _colour_map(ordered(prepared["variant"]))
    layer_names = (frame[["layer_index", "layer"]].drop_duplicates("layer_index")
                   .sort_values("layer_index"))
    fig, axes = _grid(len(chosen_settings), max_cols=3, extra_h=0.9)
    for ax, setting in zip(axes, chosen_settings):
        for i, variant in enumerate(chosen_variants):
            line = agg[(agg["setting_label"] == setting) & (agg["variant"] == variant)]
            line = line.sort_values("layer_index")
            if line.empty:
                continue
            ax.fill_between(line["layer_index"], line["band_low"], line["band_high"],
                            color=colours[variant], alpha=0.18, linewidth=0)
            ax.plot(line["layer_index"], line["ib_value"], color=colours[variant],
                    marker=MARKERS[i % len(MARKERS)], markersize=5, label=variant)
        ax.set_xticks(layer_names["layer_index"].to_numpy(),
                      labels=layer_names["layer"].tolist(), rotation=30, ha="right", fontsize=8)
        ax.set_xlabel("layer")
        ax.set_ylabel(quantity_label("ib_value", units))
        ax.set_title(setting, fontsize=9)
        ax.grid(True, linewidth=0.4, alpha=0.5)
    _variant_legend(fig, axes[0])
    when = "last checkpoint" if step == "last" else f"step {step:g}"
    fig.suptitle(f"IB value across layers ({when}, {_beta_text(frame)}, {_seed_text(frame)}, "
                 f"bands: seed intervals; units: {units})", fontsize=10)
    return fig


def plot_ib_across_lam(table, *, units: str = "nats", step="last", settings=None,
                       layers=None) -> Figure:
    """IB value against lambda, one line per layer; the baseline (lambda 0 or a plain norm)
    is marked at lambda = 0 with a hollow marker and a dotted level line.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (or a filtered view).
    units : {"nats", "bits"}
    step : "last" or number
        Checkpoint to show.
    settings, layers : str or list of str, optional
        Restrict to these estimator settings and layers.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per estimator setting; norms with a lambda share a line per layer
        (line style per norm kind when there are several).
    """
    prepared, units = _setup(table, units)
    frame = select_step(prepared, step)
    chosen_settings = _choose(frame["setting_label"], settings, "settings")
    chosen_layers = _choose(frame["layer"], layers, "layers")
    frame = frame[frame["setting_label"].isin(chosen_settings) & frame["layer"].isin(chosen_layers)]
    agg = aggregate_seeds(frame, ["setting_label", "layer", "layer_index", "model", "norm",
                                  "lam", "is_baseline", "variant"])
    agg["lam_x"] = agg["lam"].fillna(0.0)
    colours = _colour_map(chosen_layers)
    compressed_norms = ordered(agg.loc[~agg["is_baseline"], "norm"])
    styles = {n: ("-", "--", "-.", ":")[i % 4] for i, n in enumerate(compressed_norms)}
    baselines = ordered(agg.loc[agg["is_baseline"], "variant"])
    fig, axes = _grid(len(chosen_settings), max_cols=3, extra_h=0.9)
    for ax, setting in zip(axes, chosen_settings):
        panel = agg[agg["setting_label"] == setting]
        for layer in chosen_layers:
            rows = panel[panel["layer"] == layer]
            base = rows[rows["is_baseline"]]
            for norm_kind in compressed_norms:
                line = rows[(rows["norm"] == norm_kind) & ~rows["is_baseline"]].sort_values("lam_x")
                if line.empty:
                    continue
                # lambda = 0 is exactly the baseline norm, so a single baseline starts the line.
                if len(base) == 1:
                    line = pd.concat([base.iloc[[0]].assign(norm=norm_kind), line])
                ax.fill_between(line["lam_x"], line["band_low"], line["band_high"],
                                color=colours[layer], alpha=0.15, linewidth=0)
                ax.plot(line["lam_x"], line["ib_value"], color=colours[layer], marker="o",
                        markersize=4, linestyle=styles[norm_kind])
            for j, (_, b) in enumerate(base.iterrows()):
                ax.plot([b["lam_x"]], [b["ib_value"]], linestyle="", marker=MARKERS[(j + 1) % 8],
                        markersize=9, markerfacecolor="white", markeredgecolor=colours[layer],
                        markeredgewidth=1.6, zorder=3)
                ax.axhline(b["ib_value"], color=colours[layer], linestyle=":", linewidth=0.9)
        ax.set_xlabel("λ (compression strength; 0 = baseline)")
        ax.set_ylabel(quantity_label("ib_value", units))
        ax.set_title(setting, fontsize=9)
        ax.grid(True, linewidth=0.4, alpha=0.5)
    handles = [Line2D([], [], color=colours[layer], marker="o", markersize=4, label=layer)
               for layer in chosen_layers]
    handles += [Line2D([], [], color="#555555", linestyle=styles[n], label=n)
                for n in compressed_norms if len(compressed_norms) > 1]
    handles += [Line2D([], [], linestyle="", marker=MARKERS[(j + 1) % 8], markersize=8,
                       markerfacecolor="white", markeredgecolor="#555555",
                       label=f"baseline: {b}") for j, b in enumerate(baselines)]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 6),
               fontsize=8)
    when = "last checkpoint" if step == "last" else f"step {step:g}"
    fig.suptitle(f"IB value across λ ({when}, {_beta_text(frame)}, {_seed_text(frame)}; "
                 f"units: {units})", fontsize=10)
    return fig


def plot_estimator_agreement(table, *, units: str = "nats", quantity: str = "ib_value",
                             step="last", layers=None) -> Figure:
    """The same quantity under every estimator setting, per layer, one line per variant.

    Lines that cross between two settings mean the ranking of the variants changes with
    the estimator; each panel's title says whether the ranking survives every setting.

    Parameters
    ----------
    table : pandas.DataFrame
        Results table (or a filtered view).
    units : {"nats", "bits"}
    quantity : {"ib_value", "i_ty", "i_xt", "i_prev_t"}
        Column compared.
    step : "last" or number
        Checkpoint to show.
    layers : str or list of str, optional
        Restrict to these layers.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per layer; x is the estimator setting, error bars span the seeds'
        intervals of ``ib_value`` (the point spread over seeds for the other quantities).
    """
    prepared, units = _setup(table, units)
    intervals = {"ib_value": ("ci_low", "ci_high"), "i_xt": ("ci_low_xt", "ci_high_xt"),
                 "i_ty": ("ci_low_ty", "ci_high_ty"),
                 "i_prev_t": ("ci_low_prev_t", "ci_high_prev_t")}
    if quantity not in intervals:
        raise InputError(f"quantity={quantity!r} is not accepted; use one of {list(intervals)}")
    frame = select_step(prepared, step)
    chosen_layers = _choose(frame["layer"], layers, "layers")
    frame = frame[frame["layer"].isin(chosen_layers)]
    settings = ordered(frame["setting_label"])
    variants = ordered(frame["variant"])
    low, high = intervals[quantity]
    agg = aggregate_seeds(frame, ["setting_label", "layer", "variant"], value=quantity,
                          low=low, high=high)
    colours = _colour_map(ordered(prepared["variant"]))
    offsets = np.linspace(-0.12, 0.12, len(variants)) if len(variants) > 1 else [0.0]
    fig, axes = _grid(len(chosen_layers), max_cols=4, extra_h=1.2)
    for ax, layer in zip(axes, chosen_layers):
        panel = agg[agg["layer"] == layer]
        for i, variant in enumerate(variants):
            line = panel[panel["variant"] == variant].set_index("setting_label").reindex(settings)
            xs = np.arange(len(settings)) + offsets[i]
            y = line[quantity].to_numpy(dtype=float)
            err = np.vstack([y - line["band_low"].to_numpy(dtype=float),
                             line["band_high"].to_numpy(dtype=float) - y])
            ax.errorbar(xs, y, yerr=np.clip(np.nan_to_num(err), 0, None), color=colours[variant],
                        marker=MARKERS[i % len(MARKERS)], markersize=5, capsize=2,
                        linewidth=1.2, label=variant)
        verdict = rank_variants(panel, value=quantity,
                                tolerance=TIE_TOLERANCE_NATS * (1 if units == "nats" else 1 / LN2),
                                seeds=frame[frame["layer"] == layer])  # as the summary judges
        ax.set_title(f"{layer}\n{verdict['verdict']}", fontsize=9)
        ax.set_xticks(np.arange(len(settings)), labels=settings, rotation=25, ha="right",
                      fontsize=7.5)
        ax.set_xlim(-0.5, len(settings) - 0.5)
        ax.set_ylabel(quantity_label(quantity, units))
        ax.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    _variant_legend(fig, axes[0])
    when = "last checkpoint" if step == "last" else f"step {step:g}"
    fig.suptitle(f"Estimator agreement: {quantity_label(quantity, units)} per estimator setting "
                 f"({when}, {_seed_text(frame)})", fontsize=10)
    return fig
