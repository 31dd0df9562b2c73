"""Per-layer reports: a text table for the terminal, Markdown + JSON on disk."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dualprune.metrics import LayerStats, totals

__all__ = ["layer_table", "write_report"]

_COLUMNS = ("layer", "type", "shape", "weights", "nonzero", "sparsity", "MACs")


def _rows(stats: list[LayerStats]) -> list[tuple[str, ...]]:
    rows = [
        (
            s.name,
            s.kind,
            "×".join(map(str, s.shape)),
            f"{s.weights:,}",
            f"{s.nonzero:,}",
            f"{100 * s.sparsity:.1f}%",
            f"{s.macs:,}",
        )
        for s in stats
    ]
    t = totals(stats)
    rows.append(
        (
            "total",
            "",
            "",
            f"{t['weights']:,}",
            f"{t['nonzero']:,}",
            f"{100 * t['sparsity']:.1f}%",
            f"{t['macs']:,}",
        )
    )
    return rows


def layer_table(stats: list[LayerStats], markdown: bool = False) -> str:
    """Format per-layer stats as an aligned text table (or a Markdown table).

    Example:
        >>> print(layer_table(layer_stats(model, x)))   # doctest: +SKIP
        layer  type    shape       weights  nonzero  sparsity  MACs
        conv1  Conv2d  20×1×5×5        500      500      0.0%  288,000
    """
    rows = _rows(stats)
    if markdown:
        head = "| " + " | ".join(_COLUMNS) + " |"
        sep = "|" + "|".join("---" if i < 3 else "---:" for i in range(len(_COLUMNS))) + "|"
        return "\n".join([head, sep, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]

    def line(cells: tuple[str, ...]) -> str:
        return "  ".join(
            c.ljust(w) if i < 3 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(_COLUMNS), *(line(r) for r in rows)])


def write_report(
    out: str | Path,
    stats: list[LayerStats],
    summary: dict[str, Any],
    title: str = "dualprune report",
) -> Path:
    """Write ``report.md`` and ``report.json`` into ``out``; return the Markdown path.

    Args:
        out: run directory.
        stats: per-layer counts of the model (:func:`~dualprune.metrics.layer_stats`).
        summary: run-level figures (accuracy, epochs, ...) shown above the table.
        title: Markdown title.
    """
    out = Path(out)
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary.items()]
    lines += ["", "## Layers", "", layer_table(stats, markdown=True), ""]
    lines += [
        "Sparsity counts zeros of conv/linear weights only (biases and BatchNorm "
        "excluded); MACs are per sample.",
        "",
    ]
    md = out / "report.md"
    md.write_text("\n".join(lines))
    (out / "report.json").write_text(
        json.dumps(
            {"summary": summary, "totals": totals(stats), "layers": [s.as_dict() for s in stats]},
            indent=2,
        )
    )
    return md
