"""The figures the benchmark and the demo draw: sample images per class, grouped accuracy bars, and
accuracy-against-cost curves.

Both draw on matplotlib's object API (``Figure`` with an Agg canvas), not ``pyplot``: no global figure
state and no backend switch, so a figure drawn inside a test or a notebook leaves the session's alone.
"""
from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


# ------------------------------------------------------------------------------------------------------
# Images
# ------------------------------------------------------------------------------------------------------
def to_unit_range(images: torch.Tensor, normalization: tuple[float, float] | None = None) -> torch.Tensor:
    """Images back in [0, 1] for display.

    Args:
        images: a batch as the model sees it.
        normalization: the ``(mean, std)`` of the ``Normalize`` the data went through, undone here; None
            (an unknown data set) stretches the batch's own range to [0, 1].
    """
    images = images.float()
    if normalization is not None:
        mean, std = normalization
        return (images * std + mean).clamp(0, 1)
    low, high = images.min(), images.max()
    return (images - low) / (high - low).clamp_min(1e-12)


def to_uint8(images: torch.Tensor, normalization: tuple[float, float] | None = None) -> np.ndarray:
    """:func:`to_unit_range` as uint8 (what the benchmark stores for its grids)."""
    return (to_unit_range(images, normalization) * 255).round().to(torch.uint8).numpy()


def class_grid(images: np.ndarray, labels: Sequence[int], num_classes: int, per_class: int) -> np.ndarray:
    """One row per class, the first ``per_class`` images of each in order, a 1-pixel gap between cells.

    Args:
        images: ``(N, H, W)`` or ``(N, C, H, W)`` with C 1 or 3; floats in [0, 1] or uint8.
        labels: the class of each image.
        num_classes: rows of the grid.
        per_class: columns of the grid.

    Returns:
        A grey ``(rows, cols)`` array with NaN where a class has fewer images (drawn as background), or
        for colour images an RGBA array, transparent there.
    """
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        images = images[:, None]
    channels, height, width = images.shape[1:]
    colour = channels == 3
    shape = (num_classes * (height + 1), per_class * (width + 1))
    canvas = np.zeros(shape + (4,)) if colour else np.full(shape, np.nan)
    filled = [0] * num_classes
    for image, label in zip(images, labels):
        c = int(label)
        if not 0 <= c < num_classes or filled[c] >= per_class:
            continue
        top, left = c * (height + 1), filled[c] * (width + 1)
        if colour:
            canvas[top:top + height, left:left + width, :3] = image.transpose(1, 2, 0)
            canvas[top:top + height, left:left + width, 3] = 1.0
        else:
            canvas[top:top + height, left:left + width] = image[0]
        filled[c] += 1
    return canvas


@dataclass
class SamplePanel:
    """One panel of a sample figure: a title, images with their classes, optionally each class's count."""
    title: str
    images: np.ndarray
    labels: Sequence[int]
    counts: Sequence[int] | None = None


def sample_figure(path: Path, panels: Sequence[SamplePanel], class_names: Sequence[str], per_class: int,
                  title: str, panel_width: float = 2.4, height: float = 3.6, fontsize: float = 7,
                  dpi: int = 130, ylabel: str | None = None) -> Path:
    """Writes a PNG of side-by-side class grids (:func:`class_grid`), one per panel; rows named by class.

    A panel with ``counts`` labels each row ``name (count)``: how many images of the class the data (or
    the pool) holds, which a grid of a few cells cannot show. The title wraps to the figure's width.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    num_classes = len(class_names)
    width = panel_width * len(panels) + 0.8
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    for i, panel in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), i + 1)
        grid = class_grid(panel.images, panel.labels, num_classes, per_class)
        axes.imshow(grid, cmap='gray', vmin=0, vmax=1, interpolation='nearest')
        side = np.asarray(panel.images).shape[-2] + 1
        axes.set_yticks([c * side + side / 2 for c in range(num_classes)])
        names = ([f'{name} ({count})' for name, count in zip(class_names, panel.counts)]
                 if panel.counts is not None else list(class_names))
        axes.set_yticklabels(names, fontsize=fontsize - 1)
        axes.set_xticks([])
        axes.set_title(panel.title, fontsize=fontsize)
        if ylabel and i == 0:
            axes.set_ylabel(ylabel, fontsize=fontsize)
    # About 0.6 em per character: wrapped so that a one-panel figure keeps its whole title.
    figure.suptitle(textwrap.fill(title, width=max(20, int(width * 72 / (0.6 * (fontsize + 1))))),
                    fontsize=fontsize + 1)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return Path(path)


# ------------------------------------------------------------------------------------------------------
# Bars
# ------------------------------------------------------------------------------------------------------
@dataclass
class BarSeries:
    """One series of a grouped bar chart: a value (and error) per group, None where it has none."""
    label: str
    values: Sequence[float | None]
    errors: Sequence[float | None] | None = None
    color: str | None = None
    hatch: str | None = None
    alpha: float = 1.0


def grouped_bars(path: Path, groups: Sequence[str], series: Sequence[BarSeries], *, ylabel: str, title: str,
                 ylim: tuple[float, float] | None = None, log_scale: bool = False, value_labels: bool = False,
                 legend_below: bool = False, figsize: tuple[float, float] | None = None, dpi: int = 120) -> Path:
    """Writes a PNG of bars grouped by ``groups`` (x axis), one bar per series in each, with error bars.

    Args:
        path: the PNG to write.
        groups: the x-axis labels.
        series: the bars; a series' colour, hatch and alpha tell its kind apart.
        ylabel: the y-axis label.
        title: the figure's title.
        ylim: y-axis limits (default matplotlib's).
        log_scale: a logarithmic y axis (wall times).
        value_labels: write each bar's value above it.
        legend_below: the legend under the axes (few series) instead of right of them (many).
        figsize: default: wide enough for every bar.
        dpi: resolution.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    count = max(len(series), 1)
    figure = Figure(figsize=figsize or (max(6.0, 1.1 * count * len(groups) / 2.5), 4.2))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / count
    for i, bars in enumerate(series):
        points = [(j, value, (bars.errors or [None] * len(groups))[j]) for j, value in enumerate(bars.values)
                  if value is not None and math.isfinite(value)]
        if not points:
            continue
        xs = [j - 0.4 + width * (i + 0.5) for j, _, _ in points]
        errors = [e or 0.0 for _, _, e in points]
        drawn = axes.bar(xs, [v for _, v, _ in points], width, yerr=errors if any(errors) else None, capsize=2,
                         label=bars.label, hatch=bars.hatch, color=bars.color, alpha=bars.alpha,
                         edgecolor='black', linewidth=0.4)
        if value_labels:
            axes.bar_label(drawn, fmt='%.1f', fontsize=7, padding=2)
    axes.set_xticks(range(len(groups)))
    axes.set_xticklabels(list(groups))
    axes.set_ylabel(ylabel)
    if ylim is not None:
        axes.set_ylim(*ylim)
    if log_scale:
        axes.set_yscale('log')
    if legend_below:
        axes.legend(fontsize=8, loc='upper center', bbox_to_anchor=(0.5, -0.1), ncol=count, frameon=False)
    else:
        axes.legend(fontsize=7, ncol=2, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    axes.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return Path(path)



# ------------------------------------------------------------------------------------------------------
# Curves: accuracy against cost
# ------------------------------------------------------------------------------------------------------
@dataclass
class CurveSeries:
    """One line of a curve chart: points joined in order, each optionally labelled (e.g. ``2x``).

    ``highlight`` draws the line thick with large markers and its labels (the method whose cost is in
    question); the others are thin, so that the eye finds it among the alternatives.
    """
    label: str
    xs: Sequence[float]
    ys: Sequence[float]
    point_labels: Sequence[str] | None = None
    color: str | None = None
    highlight: bool = False
    dashed: bool = False


def curves(path: Path, series: Sequence[CurveSeries], *, xlabel: str, ylabel: str, title: str,
           log_x: bool = True, figsize: tuple[float, float] = (7.0, 4.4), dpi: int = 120) -> Path:
    """Writes a PNG of lines through points (x, y), one per series, the legend right of the axes.

    Args:
        path: the PNG to write.
        series: the lines; a highlighted series is drawn on top, with its point labels.
        xlabel: the x-axis label.
        ylabel: the y-axis label.
        title: the figure's title.
        log_x: a logarithmic x axis (wall times over budgets that double).
        figsize: the figure's size in inches.
        dpi: resolution.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    for line in sorted(series, key=lambda s: s.highlight):
        points = [(x, y) for x, y in zip(line.xs, line.ys) if x is not None and y is not None
                  and math.isfinite(x) and math.isfinite(y)]
        if not points:
            continue
        axes.plot([x for x, _ in points], [y for _, y in points], marker='o' if line.highlight else '.',
                  markersize=8 if line.highlight else 5, linewidth=2.2 if line.highlight else 1.0,
                  linestyle='--' if line.dashed else '-', color=line.color, label=line.label,
                  zorder=3 if line.highlight else 2, alpha=1.0 if line.highlight else 0.8)
        if line.highlight and line.point_labels:
            for (x, y), text in zip(points, line.point_labels):
                axes.annotate(text, (x, y), textcoords='offset points', xytext=(4, 4), fontsize=7,
                              color=line.color)
    if log_x:
        from matplotlib.ticker import ScalarFormatter
        axes.set_xscale('log')
        # Seconds as plain numbers (0.5, 2, 20), not powers of ten: a budget's wall time is read off them.
        for axis_formatter in (axes.xaxis.set_major_formatter, axes.xaxis.set_minor_formatter):
            axis_formatter(ScalarFormatter())
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(True, which='both', linewidth=0.3, alpha=0.5)
    axes.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.0, 1.0))
    # Wrapped to the axes' width (about 0.6 em per character at 9 pt), so a long scenario title stays whole.
    axes.set_title(textwrap.fill(title, width=int(figsize[0] * 0.62 * 72 / (0.6 * 9))), fontsize=9)
    axes.tick_params(axis='x', which='minor', labelsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    return Path(path)
