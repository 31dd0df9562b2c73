"""PNG plots of a run: accuracy across stages, ADMM/SLR residuals, sparsity per layer.

Drawn with matplotlib's object API on an Agg canvas (``matplotlib.figure.Figure``,
no pyplot): nothing is displayed, no global backend is switched, and plots can be
written from any thread. Each function returns the path it wrote, or ``None``
when its data is absent (the plot is skipped, never drawn empty).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

__all__ = ["plot_accuracy", "plot_residuals", "plot_sparsity", "write_plots"]

_LEGEND_MAX = 12  # more layers than this: colour by depth, no legend
_DPI = 120


def _figure(width: float = 7.0, height: float = 4.0) -> Any:
    """A Figure on its own Agg canvas (no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _number(x: object) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        return None
    return float(x)


def _hard_prune_x(ends: Mapping[str, float], stage_order: Sequence[str] | None) -> float:
    """Cumulative epoch of the hard prune: the end of the last trained stage before it.

    A trained stage comes after the hard prune if ``stage_order`` lists it after
    ``hard_prune``, or, when it is not listed there, if its name starts with
    ``retrain``. ``ends`` maps trained stages, in run order, to their last epoch.
    """
    order = list(stage_order or ())
    later = set(order[order.index("hard_prune") + 1 :]) if "hard_prune" in order else set()
    x = 0.0
    for stage, end in ends.items():
        if stage in later or (stage not in order and stage.startswith("retrain")):
            return x
        x = end
    return x


def plot_accuracy(
    histories: Mapping[str, Sequence[Mapping[str, Any]]] | None,
    path: str | Path,
    hard_prune: float | None = None,
    stage_order: Sequence[str] | None = None,
) -> Path | None:
    """Test accuracy per epoch across stages, on a cumulative epoch axis.

    Args:
        histories: ``{stage: [{"epoch": 1, "test_acc": 0.97, ...}, ...]}`` in run order
            (``metrics.jsonl`` rows); one colour per stage. ``test_acc`` is a fraction.
        path: PNG to write.
        hard_prune: retrain-free accuracy right after the hard prune, drawn as a star
            at the end of the stage that precedes it (:func:`_hard_prune_x`); not
            plotted alone (no test accuracy in ``histories``: no plot).
        stage_order: all stage names in run order (the report's ``stages`` keys).
    """
    series: dict[str, tuple[list[float], list[float]]] = {}
    ends: dict[str, float] = {}
    offset = 0.0
    for stage, rows in (histories or {}).items():
        xs, ys = [], []
        last = offset
        for i, row in enumerate(rows):
            epoch = _number(row.get("epoch"))
            x = offset + (epoch if epoch is not None else i + 1)
            last = max(last, x)
            acc = _number(row.get("test_acc"))
            if acc is not None:
                xs.append(x)
                ys.append(100 * acc)
        if xs:
            series[stage] = (xs, ys)
        ends[stage] = last
        offset = last
    if not series:
        return None
    hp = _number(hard_prune)
    fig = _figure()
    ax = fig.add_subplot()
    for i, (stage, (xs, ys)) in enumerate(series.items()):
        ax.plot(xs, ys, marker="o", markersize=3, color=f"C{i}", label=stage)
        if i:
            ax.axvline(xs[0] - 0.5, color="0.8", linewidth=0.8, zorder=0)
    if hp is not None:
        x = _hard_prune_x(ends, stage_order)
        ax.plot(
            [x], [100 * hp], marker="*", markersize=14, linestyle="none", color="black",
            label=f"hard prune, no retraining ({100 * hp:.2f}%)",
        )  # fmt: skip
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch (cumulative over stages)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    ax.set_title("Test accuracy across stages")
    return _save(fig, path)


def plot_residuals(updates: Sequence[Mapping[str, Any]] | None, path: str | Path) -> Path | None:
    """Relative primal residual ||W_i − Z_i||_F / ||W_i||_F per layer per update (log y).

    Args:
        updates: solver records ``{"update": k, "layers": {name: {"residual": r, ...}}}``;
            missing keys are tolerated (the k-th record is update k), non-positive or
            missing residuals are left out.
        path: PNG to write.
    """
    lines: dict[str, tuple[list[float], list[float]]] = {}
    for i, rec in enumerate(updates or ()):
        k = _number(rec.get("update"))
        x = k if k is not None else float(i + 1)
        for name, values in (rec.get("layers") or {}).items():
            r = _number(values.get("residual")) if isinstance(values, Mapping) else None
            if r is not None and r > 0:
                xs, ys = lines.setdefault(name, ([], []))
                xs.append(x)
                ys.append(r)
    if not lines:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    from matplotlib import colormaps

    many = len(lines) > _LEGEND_MAX
    depth = colormaps["viridis"]
    for j, (name, (xs, ys)) in enumerate(lines.items()):
        colour = depth(j / max(1, len(lines) - 1)) if many else f"C{j % 10}"
        ax.plot(xs, ys, marker=".", color=colour, linewidth=1, label=None if many else name)
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("solver update")
    ax.set_ylabel(r"$\|W - Z\|_F \;/\; \|W\|_F$")
    ax.grid(True, which="both", alpha=0.3)
    if many:
        ax.set_title(f"Residuals of {len(lines)} layers (colour: first → last layer)")
    else:
        ax.set_title("Residual per layer")
        ax.legend(fontsize="small")
    return _save(fig, path)


def plot_sparsity(layers: Sequence[Mapping[str, Any]] | None, path: str | Path) -> Path | None:
    """A bar per layer: its sparsity (%) coloured by structure, its value bits on top.

    Args:
        layers: the report's ``layers`` (``name``, ``sparsity``, optional ``structure``, ``bits``).
        path: PNG to write.
    """
    rows = [la for la in layers or () if _number(la.get("sparsity")) is not None]
    if not rows:
        return None
    structures = list(dict.fromkeys(str(la.get("structure", "dense")) for la in rows))
    fig = _figure(width=max(6.0, 0.4 * len(rows) + 2), height=4.0)
    ax = fig.add_subplot()
    xs = range(len(rows))
    heights = [100 * float(la["sparsity"]) for la in rows]
    colours = [f"C{structures.index(str(la.get('structure', 'dense'))) % 10}" for la in rows]
    ax.bar(xs, heights, color=colours)
    for x, h, la in zip(xs, heights, rows, strict=True):
        if la.get("bits") is not None:
            ax.text(x, h + 1, f"{la['bits']}b", ha="center", va="bottom", fontsize="x-small")
    ax.set_xticks(list(xs), [str(la["name"]) for la in rows], rotation=60, ha="right")
    ax.set_ylim(0, 110)
    ax.set_ylabel("sparsity (% of weights zero)")
    ax.set_title("Sparsity per layer (label: bits per stored value)")
    from matplotlib.patches import Patch

    ax.legend(
        handles=[Patch(color=f"C{i % 10}", label=s) for i, s in enumerate(structures)],
        fontsize="small",
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
    )
    return _save(fig, path)


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path)
    return path


def write_plots(
    out_dir: str | Path,
    report: Mapping[str, Any] | None = None,
    histories: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    updates: Sequence[Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write ``accuracy.png``, ``residuals.png`` and ``sparsity.png`` where data exists.

    Args:
        out_dir: existing directory.
        report: from :func:`dualprune.report.report.build_report` (its ``layers`` and the
            ``hard_prune`` stage's ``test_acc``).
        histories: per stage, per-epoch metric rows.
        updates: solver update records.

    Returns:
        The paths written, in that order.
    """
    out = Path(out_dir)
    report = report or {}
    stages = report.get("stages") or {}
    hard = (stages.get("hard_prune") or {}).get("test_acc")
    written = [
        plot_accuracy(histories, out / "accuracy.png", hard_prune=hard, stage_order=list(stages)),
        plot_residuals(updates, out / "residuals.png"),
        plot_sparsity(report.get("layers"), out / "sparsity.png"),
    ]
    return [p for p in written if p is not None]
