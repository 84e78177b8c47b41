"""Figure layout faults matplotlib can tell (issue 21 item 4): text over text, notes and legends over data.

Each figure is drawn from the committed data (figures/data/<name>.npz/json, loaded as analyses/runner.py
loads them) by its analysis' ``plot`` and checked with the artists' tight bounding boxes after a draw: no two
text boxes (tick labels, axis labels, titles, notes, legend entries, the suptitle) overlap, and no note or
legend box covers a point of a plotted line of its axes (lines sampled densely in display space).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from analyses import runner  # noqa: E402

DATA = Path(runner.__file__).resolve().parent.parent / "figures" / "data"


def _tick_labels(axis, tag):
    """(label, Text) of the major tick labels drawn: ticks inside the view interval only."""
    lo, hi = sorted(axis.get_view_interval())
    eps = 1e-9 * max(abs(lo), abs(hi), 1e-300)
    out = []
    for tick in axis.get_major_ticks():
        if lo - eps <= tick.get_loc() <= hi + eps:
            out += [(f"{tag} {t.get_text()}", t) for t in (tick.label1, tick.label2) if t.get_visible()]
    return out


def _texts(fig):
    """(label, Text) of every visible non-empty text of the figure."""
    out = []
    if fig._suptitle is not None:
        out.append(("suptitle", fig._suptitle))
    for leg in fig.legends:
        out += [(f"figure legend {t.get_text()}", t) for t in leg.get_texts() if t.get_text().strip()]
    for k, ax in enumerate(fig.axes):
        if not ax.get_visible():
            continue
        named = [(f"ax{k} title", ax.title), (f"ax{k} xlabel", ax.xaxis.label),
                 (f"ax{k} ylabel", ax.yaxis.label)]
        named += _tick_labels(ax.xaxis, f"ax{k} xtick") + _tick_labels(ax.yaxis, f"ax{k} ytick")
        named += [(f"ax{k} note {t.get_text()[:30]!r}", t) for t in ax.texts]
        leg = ax.get_legend()
        if leg is not None:
            named += [(f"ax{k} legend {t.get_text()}", t) for t in leg.get_texts()]
        out += [(n, t) for n, t in named if t.get_visible() and t.get_text().strip()]
    return out


def _line_points(ax, per_segment=25):
    """(N, 2) display coordinates of the visible lines of ``ax`` (vertices and points between them), clipped
    to the axes."""
    pts = []
    for line in ax.get_lines():
        if not line.get_visible() or len(line.get_xdata()) == 0:
            continue
        xy = line.get_transform().transform(np.column_stack([line.get_xdata(), line.get_ydata()]))
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if len(xy) > 1:
            t = np.linspace(0, 1, per_segment)[:, None, None]
            xy = (xy[:-1][None] * (1 - t) + xy[1:][None] * t).reshape(-1, 2)
        pts.append(xy)
    if not pts:
        return np.zeros((0, 2))
    pts = np.concatenate(pts)
    box = ax.get_window_extent()
    inside = (pts[:, 0] >= box.x0) & (pts[:, 0] <= box.x1) & (pts[:, 1] >= box.y0) & (pts[:, 1] <= box.y1)
    return pts[inside]


def layout_faults(fig) -> list[str]:
    """Overlapping texts and notes/legends over line data, as readable strings."""
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    faults = []
    boxes = [(n, t.get_window_extent(r)) for n, t in _texts(fig)]
    for (n1, b1), (n2, b2) in itertools.combinations(boxes, 2):
        if b1.overlaps(b2) and b1.width > 0 and b2.width > 0:
            faults.append(f"text overlap: {n1} / {n2}")
    for k, ax in enumerate(fig.axes):
        pts = _line_points(ax)
        covers = [(f"note {t.get_text()[:30]!r}", t.get_window_extent(r))
                  for t in ax.texts if t.get_visible()]
        if ax.get_legend() is not None:
            covers.append(("legend", ax.get_legend().get_window_extent(r)))
        covers += [("figure legend", leg.get_window_extent(r)) for leg in fig.legends]
        for name, b in covers:
            hit = (pts[:, 0] > b.x0) & (pts[:, 0] < b.x1) & (pts[:, 1] > b.y0) & (pts[:, 1] < b.y1)
            if hit.any():
                faults.append(f"ax{k} ({ax.get_title()}): {name} over plotted data ({int(hit.sum())} points)")
    return faults


def test_the_checker_sees_overlaps():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1], label="a line")
    ax.text(0.5, 0.5, "a note on the line", transform=ax.transAxes, ha="center")
    ax.text(0.5, 0.5, "another", transform=ax.transAxes, ha="center")
    faults = layout_faults(fig)
    assert any("text overlap" in f for f in faults) and any("over plotted data" in f for f in faults)
    fig2, ax2 = plt.subplots(figsize=(3, 2))
    ax2.plot([0, 1], [0, 1], label="a line")
    ax2.legend(loc="lower right")
    assert layout_faults(fig2) == []
    plt.close("all")


@pytest.mark.parametrize("name, stem", [
    ("decay", "decay"), ("lyapunov", "lyapunov_spectra"), ("lyapunov", "lyapunov_gain"),
    ("batch_coupling", "batch_coupling"), ("training", "training_curves"),
    ("cooijmans_fig1a", "cooijmans_fig1a_gain"),
])
def test_committed_figures_have_no_layout_faults(name, stem):
    if not (DATA / f"{name}.npz").exists():
        pytest.skip(f"no committed data for {name}")
    mod = runner.load_module(name)
    figs = mod.plot(runner.load_data(DATA / name))
    try:
        assert layout_faults(figs[stem]) == []
    finally:
        plt.close("all")
