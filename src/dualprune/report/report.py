"""The compression report: a plain dict, a terminal table, Markdown + JSON + PNG on disk.

What every figure means and how it is counted (indices included) is in
docs/report.md; the counting rules are docs/algorithms.md §4.

>>> rep = build_report(model, x, plan.resolve(model), stages={"hard_prune": {"test_acc": 0.98}})
>>> print(terminal_table(rep))                      # doctest: +SKIP
>>> write_report("runs/lenet5", rep, histories={"pretrain": rows}, title="LeNet-5")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from dualprune.constraints import Constraint
from dualprune.size.metrics import LayerStats, compression_ratio, layer_stats, model_totals, totals
from dualprune.size.storage import value_part

__all__ = [
    "COUNTING",
    "build_report",
    "layer_table",
    "quantization_of",
    "report_from_stats",
    "terminal_table",
    "totals_lines",
    "write_report",
]

_COLUMNS = ("layer", "type", "shape", "weights", "nonzero", "sparsity", "MACs")
_REPORT_COLUMNS = (
    "layer", "type", "shape", "structure", "bits", "weights", "nonzero", "sparsity",
    "index", "storage", "break-even", "MACs", "eff. MACs",
)  # fmt: skip
_LEFT = 4  # the first columns (text) are left-aligned, numbers right-aligned
COUNTING = (
    "Sparsity and compression count conv/linear weights only (biases and BatchNorm are never "
    "pruned); 'over all parameters' adds them as nonzeros. Storage = values (b bits each; "
    "fewer where an index marks the nonzeros: ternary 1 bit) + index (bitmask, relative "
    "indices with escapes or Golomb-Rice gaps, whichever is smallest; none where dense is "
    "smaller) + 32-bit scales; biases and BatchNorm (running statistics too) stay fp32; "
    "indices ARE counted. Break-even = (b_nz + b_idx)/b_w, the compression from which relative "
    "indices pay off (ADMM-NN). MACs are per sample (FlopCounterMode); effective MACs skip zero "
    "weights; padding is not subtracted. Bytes are decimal (1 kB = 1000 B). See docs/report.md."
)


# ---- plain data -------------------------------------------------------------------------


def quantization_of(constraint: Constraint | None) -> str:
    """``"fp32"``, ``"uniform 4-bit"``, ``"ternary"``, ``"pow2 4-bit/channel"``, ``"3 levels"``…"""
    q = value_part(constraint)
    if q is None:
        return "fp32"
    kind = getattr(q, "kind", type(q).__name__.lower())
    if kind in ("uniform", "pow2"):
        text = f"{kind} {q.bits or 4}-bit"  # type: ignore[attr-defined]
    elif kind == "list":
        text = f"{q.level_values().numel()} levels"  # type: ignore[attr-defined]
    else:
        text = str(kind)
    scale = getattr(q, "scale", "tensor")
    return text + ("" if scale == "tensor" else f"/{scale}")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _plain(obj: Any) -> Any:
    """JSON-able copy: mappings and sequences recursed, ∞/NaN → None, other objects → str."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return _finite(obj)
    if hasattr(obj, "item"):  # tensors and numpy scalars
        return _plain(obj.item())
    return str(obj)


def _layer_entry(s: LayerStats, constraint: Constraint | None) -> dict[str, Any]:
    st = s.storage
    entry: dict[str, Any] = {
        "name": s.name,
        "kind": s.kind,
        "shape": list(s.shape),
        "structure": s.structure,
        "quantization": quantization_of(constraint),
        "constraint": None if constraint is None else constraint.to_dict(),
        "weights": s.weights,
        "nonzeros": s.nonzero,
        "sparsity": s.sparsity,
        "compression": _finite(compression_ratio(s.weights, s.nonzero)),
        "bits": s.bits,
        "macs_dense": s.macs,
        "macs_effective": s.effective_macs,
        "macs": s.macs,  # = macs_dense, the key of earlier report.json files
    }
    if st is not None:
        be = st.break_even
        entry |= {
            "storage_bytes": st.bytes,
            "storage_bytes_dense": st.dense_bits // 8,
            "nonzero_bits": st.nonzero_bits,
            "value_bits": st.value_bits,
            "index_bits": st.index_bits,
            "scale_bits": st.scale_bits,
            "index_kind": st.index_kind,
            "index_bits_per_entry": st.index_bits_per_entry,
            "padding": st.padding,
            "relative_index_bits": st.relative_index_bits,
            "rice_parameter": st.rice_parameter,
            "rice_bits": st.rice_bits,
            "break_even": be,
            "break_even_pruning": st.break_even_pruning,
            "above_break_even": None if be is None else s.weights >= be * s.nonzero,
        }
    return entry


def report_from_stats(
    stats: list[LayerStats],
    *,
    model: nn.Module | None = None,
    constraints: Mapping[str, Constraint | None] | None = None,
    stages: Mapping[str, Mapping[str, float]] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report dict of :func:`build_report` from stats already computed.

    Without ``model`` the figures over all parameters (``params_all``,
    ``compression_all_params``, whole-model storage) are ``None``.
    """
    constraints = constraints or {}
    t: dict[str, Any] = dict(model_totals(model, stats) if model is not None else totals(stats))
    whole = model is not None
    macs, eff = t["macs"], t["effective_macs"]
    dense = t["storage_bits_dense"] // 8  # each layer byte-aligned, as in ModelStorage
    packed = sum(s.storage.bytes for s in stats if s.storage is not None)
    report_totals = {
        "weights": t["weights"],
        "nonzeros": t["nonzero"],
        "sparsity": t["sparsity"],
        "compression_prunable": t["compression"],
        "params_other": t.get("params_other"),
        "params_all": t.get("params_all"),
        "compression_all_params": t.get("compression_all"),
        "storage_bytes_dense_prunable": dense,
        "storage_bytes_compressed_prunable": packed,
        "storage_ratio_prunable": compression_ratio(dense, packed),
        "storage_bytes_dense": t.get("storage_bytes_dense"),
        "storage_bytes_compressed": t.get("storage_bytes"),
        "storage_ratio": t.get("storage_ratio"),
        "storage_counts": (
            "values + indices + scales of prunable weights"
            + ("; other parameters and float buffers at fp32" if whole else " (model not given)")
        ),
        "indices_counted": True,
        "macs_dense": macs,
        "macs_effective": eff,
        "macs_ratio": compression_ratio(macs, eff) if macs else None,
    }
    return _plain(
        {
            "summary": dict(summary or {}),
            "stages": {k: dict(v) for k, v in (stages or {}).items()},
            "layers": [_layer_entry(s, constraints.get(s.name)) for s in stats],
            "totals": report_totals,
        }
    )


def build_report(
    model: nn.Module,
    example_input: Tensor | None,
    constraints: Mapping[str, Constraint | None] | None = None,
    stages: Mapping[str, Mapping[str, float]] | None = None,
    summary: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The compression report of ``model`` as plain JSON-able data.

    Args:
        model: the model as it is (after the hard prune: its zeros are the pruned weights).
        example_input: a batch for counting MACs (first sample only); ``None``: MACs are 0.
        constraints: constraint per module name, as from ``Plan.resolve(model)``;
            layers not in it are dense fp32.
        stages: ``{stage: {"test_acc": ..., "test_loss": ...}}``, e.g. ``pretrain``,
            ``hard_prune`` (retrain-free), ``retrain``, ``final``; any float metrics.
        summary: run-level lines shown first (model, data set, recipe, ...).

    Returns:
        ``{"summary", "stages", "layers": [per layer], "totals"}``; non-finite
        numbers (a ratio over a fully pruned model) are ``None``. Keys are listed in
        docs/report.md.

    Raises:
        PlanError: a key of ``constraints`` is no prunable layer of ``model``.
    """
    stats = layer_stats(model, example_input, constraints)
    return report_from_stats(
        stats, model=model, constraints=constraints, stages=stages, summary=summary
    )


# ---- text -------------------------------------------------------------------------------


def _si(x: float | None, unit: str = "") -> str:
    """3 significant figures with k/M/G (decimal)."""
    if x is None:
        return "–"
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}" if isinstance(x, float) else f"{x}{unit}"


def _bytes(n: float | None) -> str:
    text = _si(n, "B")
    return text if n is None else f"{text[:-2]} {text[-2:]}" if text[-2] in "kMG" else f"{n} B"


def _ratio(x: float | None) -> str:
    return "∞" if x is None else f"{x:.3g}×" if x < 1000 else f"{x:,.0f}×"


def _table(columns: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool, left: int) -> str:
    if markdown:
        head = "| " + " | ".join(columns) + " |"
        sep = "|" + "|".join("---" if i < left else "---:" for i in range(len(columns))) + "|"
        return "\n".join([head, sep, *("| " + " | ".join(r) + " |" for r in rows)])
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(columns), *(line(r) for r in rows)])


def _rows(stats: list[LayerStats]) -> list[tuple[str, ...]]:
    t = totals(stats)
    counts: list[tuple[str, str, str, float, float, float, float]] = [
        (s.name, s.kind, "×".join(map(str, s.shape)), s.weights, s.nonzero, s.sparsity, s.macs)
        for s in stats
    ]
    counts.append(("total", "", "", t["weights"], t["nonzero"], t["sparsity"], t["macs"]))
    return [(a, b, c, f"{w:,}", f"{nz:,}", f"{100 * sp:.1f}%", f"{m:,}")
            for a, b, c, w, nz, sp, m in counts]  # fmt: skip


def layer_table(stats: list[LayerStats], markdown: bool = False) -> str:
    """Format per-layer stats as an aligned text table (or a Markdown table).

    The short table (counts and MACs); :func:`terminal_table` shows the full report.

    Example:
        >>> print(layer_table(layer_stats(model, x)))   # doctest: +SKIP
        layer  type    shape       weights  nonzero  sparsity  MACs
        conv1  Conv2d  20×1×5×5        500      500      0.0%  288,000
    """
    return _table(_COLUMNS, _rows(stats), markdown, left=3)


def _report_rows(report: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for la in report["layers"]:
        index = la.get("index_kind", "–")
        if index == "relative":
            index = f"rel {la['index_bits_per_entry']}b"
        elif index == "rice":
            index = f"rice r={la['index_bits_per_entry']}"
        rows.append(
            (
                la["name"],
                la["kind"],
                "×".join(map(str, la["shape"])),
                la["structure"],
                str(la["bits"]),
                f"{la['weights']:,}",
                f"{la['nonzeros']:,}",
                f"{100 * la['sparsity']:.1f}%",
                index,
                _bytes(la.get("storage_bytes")),
                "–" if la.get("break_even") is None else f"{la['break_even']:.3g}×",
                _si(la["macs_dense"]),
                _si(la["macs_effective"]),
            )
        )
    t = report["totals"]
    rows.append(("total", "", "", "", "", f"{t['weights']:,}", f"{t['nonzeros']:,}",
                 f"{100 * t['sparsity']:.1f}%", "", _bytes(t["storage_bytes_compressed_prunable"]),
                 "", _si(t["macs_dense"]), _si(t["macs_effective"])))  # fmt: skip
    return rows


def totals_lines(report: Mapping[str, Any]) -> list[str]:
    """The headline figures, one per line (indices counted in every storage figure)."""
    t = report["totals"]
    lines = [
        f"compression: {_ratio(t['compression_prunable'])} over prunable weights "
        f"({t['weights']:,} → {t['nonzeros']:,} nonzero, {100 * t['sparsity']:.1f}% sparse)"
        + (
            f", {_ratio(t['compression_all_params'])} over all {t['params_all']:,} parameters"
            if t.get("params_all") is not None
            else ""
        ),
        f"storage of prunable weights: {_bytes(t['storage_bytes_dense_prunable'])} fp32 → "
        f"{_bytes(t['storage_bytes_compressed_prunable'])} "
        f"({_ratio(t['storage_ratio_prunable'])}, values + indices + scales)",
    ]
    if t.get("storage_bytes_dense") is not None:
        lines.append(
            f"storage of the model: {_bytes(t['storage_bytes_dense'])} → "
            f"{_bytes(t['storage_bytes_compressed'])} ({_ratio(t['storage_ratio'])}, "
            "indices counted; biases and BatchNorm fp32)"
        )
    if t["macs_dense"]:
        lines.append(
            f"MACs per sample: {_si(t['macs_dense'])} dense → {_si(t['macs_effective'])} "
            f"effective ({_ratio(t['macs_ratio'])})"
        )
    return lines


def terminal_table(report: Mapping[str, Any]) -> str:
    """The per-layer table of a report, aligned for a terminal, then the totals."""
    table = _table(_REPORT_COLUMNS, _report_rows(report), markdown=False, left=_LEFT)
    return "\n".join([table, "", *totals_lines(report)])


def _stages_table(stages: Mapping[str, Mapping[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for v in stages.values() for k in v))
    rows = []
    for name, values in stages.items():
        cells = [name]
        for k in keys:
            v = values.get(k)
            if v is None:
                cells.append("–")
            elif k.endswith("_acc") and isinstance(v, float) and v <= 1:
                cells.append(f"{100 * v:.2f}%")
            else:
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        rows.append(cells)
    return _table(["stage", *(k.replace("_", " ") for k in keys)], rows, True, left=1)


def _markdown(report: Mapping[str, Any], title: str, plots: list[Path]) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in report.get("summary", {}).items()]
    if report.get("stages"):
        lines += ["", "## Stages", "", _stages_table(report["stages"])]
        if "hard_prune" in report["stages"]:
            lines += ["", "`hard_prune` is the accuracy right after projection, before retraining."]
    lines += ["", "## Compression", "", *(f"- {x}" for x in totals_lines(report))]
    table = _table(_REPORT_COLUMNS, _report_rows(report), markdown=True, left=_LEFT)
    lines += ["", "## Layers", "", table, "", COUNTING, ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}]({p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    report: Mapping[str, Any] | list[LayerStats],
    summary: Mapping[str, Any] | None = None,
    *,
    histories: Mapping[str, list[dict[str, Any]]] | None = None,
    updates: list[dict[str, Any]] | None = None,
    title: str = "dualprune report",
) -> Path:
    """Write ``report.md``, ``report.json`` and the PNG plots into ``out_dir``.

    Args:
        out_dir: run directory (created if missing).
        report: from :func:`build_report`. A list of
            :class:`~dualprune.size.metrics.LayerStats` is still accepted (the earlier
            form): figures over all parameters are then missing.
        summary: extra summary lines, merged over ``report["summary"]``.
        histories: per stage, the per-epoch metric dicts of ``metrics.jsonl``
            (``epoch``, ``test_acc``, ...); gives ``accuracy.png``.
        updates: solver update records (``update``, ``layers: {name: {"residual"}}``,
            ...); gives ``residuals.png``.
        title: Markdown title.

    Returns:
        The path of ``report.md``. Plots whose data is absent are skipped.
    """
    from dualprune.report.plots import write_plots  # matplotlib only when writing

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(report, list):
        report = report_from_stats(report, summary=summary)
    elif summary:
        report = {**report, "summary": {**report.get("summary", {}), **summary}}
    plots = write_plots(out, report, histories=histories, updates=updates)
    md = out / "report.md"
    md.write_text(_markdown(report, title, plots))
    data = _plain({"title": title, **report, "plots": [p.name for p in plots]})
    (out / "report.json").write_text(json.dumps(data, indent=2, allow_nan=False))
    return md
