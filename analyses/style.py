"""One plotting style for every gradflow figure: colours per preset, sizes, fonts, axis labels.

Use :func:`figure` to make a figure (it applies the style), :func:`color` / :func:`label` for a preset's
colour and legend text, and the label constants for axes, so all figures read alike.

Example::

    from analyses import style
    fig, ax = style.figure()
    ax.semilogy([1, 2, 3], [1, 10, 100], color=style.color("tanh"), label=style.label("tanh"))
    style.finish(ax, xlabel=style.LAG, ylabel=style.JNORM)
"""

from __future__ import annotations

import math

import matplotlib

matplotlib.rcParams.setdefault("backend", "Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RC = {
    "figure.dpi": 120,
    "savefig.dpi": 120,
    "font.size": 8.5,
    "axes.titlesize": 9,
    "axes.labelsize": 8.5,
    "legend.fontsize": 7.5,
    "xtick.labelsize": 7.5,
    "ytick.labelsize": 7.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.4,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "figure.constrained_layout.use": True,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}

#: A fixed colour per preset (the two cells under test in strong red / orange).
PRESET_COLORS = {
    "tanh": "#1f77b4",
    "linear": "#7f7f7f",
    "bn_notanh": "#d62728",
    "bn_input_tanh": "#17becf",
    "bn_tanh": "#9467bd",
    "ln_notanh": "#ff7f0e",
    "ln_tanh": "#2ca02c",
    "lstm": "#8c564b",
    "bn_lstm": "#e377c2",
    "ln_lstm": "#bcbd22",
    "gru": "#393b79",
}

#: A fixed marker per preset, so that overlapping curves stay distinguishable.
PRESET_MARKERS = {
    "tanh": "o", "linear": "x", "bn_notanh": "s", "bn_input_tanh": "v", "bn_tanh": "D", "ln_notanh": "^",
    "ln_tanh": "<", "lstm": ">", "bn_lstm": "P", "ln_lstm": "*", "gru": "h",
}

PRESET_LABELS = {
    "tanh": "tanh",
    "linear": "linear (no tanh)",
    "bn_notanh": "bn_notanh (proposal)",
    "bn_input_tanh": "bn_input_tanh",
    "bn_tanh": "bn_tanh",
    "ln_notanh": "ln_notanh (fallback)",
    "ln_tanh": "ln_tanh",
    "lstm": "lstm",
    "bn_lstm": "bn_lstm",
    "ln_lstm": "ln_lstm",
    "gru": "gru",
}

# Axis labels (with units) shared by the figures.
LAG = "lag T − t (steps)"
JNORM = "‖∂h_T/∂h_t‖₂ (spectral norm)"
JNORM_FRO = "‖∂h_T/∂h_t‖_F (Frobenius norm)"
RATE = "per-step rate (ln per step)"
LYAP = "Lyapunov exponent λ (ln per step)"
GAIN = "recurrent gain g"
SEQLEN = "sequence length T (steps)"
TIME = "time step t"
SV = "singular value σ"

_FALLBACK = plt.get_cmap("tab20").colors


def apply() -> None:
    """Set the shared matplotlib rcParams."""
    matplotlib.rcParams.update(RC)


def color(name: str, i: int = 0):
    """The colour of a preset (a stable fallback colour for other names, indexed by ``i``)."""
    return PRESET_COLORS.get(name, _FALLBACK[i % len(_FALLBACK)])


def marker(name: str) -> str:
    """The marker of a preset ("o" for other names)."""
    return PRESET_MARKERS.get(name, "o")


def label(name: str) -> str:
    """The legend text of a preset."""
    return PRESET_LABELS.get(name, name)


def shades(n: int, cmap: str = "viridis", lo: float = 0.1, hi: float = 0.85) -> list:
    """``n`` colours along a sequential colormap (for a swept parameter: gains, γ, lags, batch sizes)."""
    cm = plt.get_cmap(cmap)
    return [cm(lo + (hi - lo) * (k / max(n - 1, 1))) for k in range(n)]


def figure(nrows: int = 1, ncols: int = 1, width: float | None = None, height: float | None = None,
           sharex=False, sharey=False, squeeze=True):
    """A styled figure with a grid of axes; default size 3.3 × 2.6 inches per panel (at most 11 inches wide).

    Returns:
        (fig, axes): as ``plt.subplots``.
    """
    apply()
    w = width if width is not None else min(3.3 * ncols, 11.0)
    h = height if height is not None else 2.6 * nrows
    return plt.subplots(nrows, ncols, figsize=(w, h), sharex=sharex, sharey=sharey, squeeze=squeeze)


def grid_shape(n: int, max_cols: int = 4) -> tuple[int, int]:
    """(rows, cols) for ``n`` panels."""
    cols = min(n, max_cols)
    return math.ceil(n / cols), cols


def finish(ax, xlabel: str | None = None, ylabel: str | None = None, title: str | None = None,
           legend: bool | str = True, **legend_kw) -> None:
    """Label an axes and add a legend when it has labelled artists."""
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(**({"loc": legend} if isinstance(legend, str) else {}), **legend_kw)


def hide_unused(axes, n: int) -> None:
    """Hide the panels past the first ``n`` of a flattened axes grid."""
    for ax in np.ravel(axes)[n:]:
        ax.set_visible(False)


def log_from_ln(y):
    """Natural-log values -> the linear values to draw on a log axis (clipped to float64's range)."""
    return np.exp(np.clip(np.asarray(y, dtype=float), -700.0, 700.0))


def plain_log_ticks(ax, axis: str = "y") -> None:
    """Label a log axis with plain numbers (0.5, 2, ...), no minor labels (spans of a decade or two)."""
    import matplotlib.ticker as mt

    a = ax.yaxis if axis == "y" else ax.xaxis
    a.set_major_formatter(mt.FormatStrFormatter("%g"))
    a.set_minor_formatter(mt.NullFormatter())


def note(ax, text: str, loc: str = "lower left") -> None:
    """A small grey annotation in a corner of the axes."""
    pos = {"lower left": (0.02, 0.03, "left", "bottom"), "upper left": (0.02, 0.97, "left", "top"),
           "lower right": (0.98, 0.03, "right", "bottom"), "upper right": (0.98, 0.97, "right", "top")}[loc]
    ax.text(pos[0], pos[1], text, transform=ax.transAxes, ha=pos[2], va=pos[3], fontsize=6.5, color="0.35")
