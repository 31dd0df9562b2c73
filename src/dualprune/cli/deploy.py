"""Subcommands that make a compressed model deployable: compact, bench, export, widths."""

from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path
from typing import Any

from torch import nn

from dualprune.cli.args import add_threads, json_out, positive_float, positive_int

FORMATS = ("packed", "onnx", "torch")


def _compacted(art: Any) -> tuple[nn.Module, Any, list[str]]:
    """The compacted model, its plan, and the warnings compaction gave."""
    from dualprune.compaction.remove import CompactionResult, compact

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = compact(art.model, art.random_input(2), art.masks)
    plan = CompactionResult.from_module(small)
    return small, plan, [str(w.message) for w in caught]


def cmd_compact(args: argparse.Namespace) -> int:
    """``dualprune compact RUN_DIR|CHECKPOINT``: physically remove pruned channels."""
    from dualprune.export import save_torch
    from dualprune.pipeline.artifacts import load_artifact
    from dualprune.train.checkpoint import ensure_writable

    art = load_artifact(args.path)
    base = art.run_dir if art.run_dir is not None else art.source.parent
    out = ensure_writable(Path(args.out) if args.out else base / "compact")  # before the work
    small, plan, notes = _compacted(art)
    print(plan)
    for note in notes:
        print(f"note: {note}")
    save_torch(
        small, out / "model.safetensors", {"model": art.name, "num_classes": art.num_classes}
    )
    (out / "compaction.json").write_text(json.dumps(plan.as_dict(), indent=1) + "\n")
    print(f"\nwrote {out / 'model.safetensors'} (load with dualprune.export.load_torch)")
    print(f"wrote {out / 'compaction.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``dualprune bench RUN_DIR|CHECKPOINT``: dense vs compacted vs sparse latency."""
    from dualprune.pipeline.artifacts import load_artifact
    from dualprune.size.metrics import dense_macs, layer_stats
    from dualprune.speed.latency import batch_of, compare_latency
    from dualprune.speed.sparsify import sparsify_for_inference

    art = load_artifact(args.path)
    path = json_out(args, art.source, art.run_dir, "bench.json")  # checked before the work
    model = art.model.eval()
    small, _, _ = _compacted(art)
    small.eval()
    x = art.random_input(max(args.batch_sizes))
    stats = layer_stats(model, x[:1])
    dense = float(sum(s.macs for s in stats))
    result: dict[str, Any] = {"model": art.name, "source": str(art.source), "batches": {}}
    for b in args.batch_sizes:
        xb = batch_of(x, b)
        variants: dict[str, nn.Module] = {"dense": model, "compacted": small}
        macs = {"dense": dense, "compacted": float(sum(dense_macs(small, x[:1]).values()))}
        entry: dict[str, Any] = {}
        if args.sparse:
            fast, rep = sparsify_for_inference(model, xb, threads=args.threads)
            variants["sparse"] = fast
            macs["sparse"] = float(
                sum(s.effective_macs if s.name in rep.swapped else s.macs for s in stats)
            )
            print(f"sparse execution at batch {b}:\n{rep}\n")
            entry["sparsify"] = rep.as_dict()
        cmp = compare_latency(
            variants,
            xb,
            batch_sizes=(b,),
            threads=args.threads,
            repeats=args.repeats,
            macs=macs,
        )
        print(cmp)
        print()
        entry["latency"] = cmp.as_dict()
        result["batches"][str(b)] = entry
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    if art.run_dir is not None and path == art.run_dir / "bench.json":
        from dualprune.pipeline import report_run

        report, _ = report_run(art.run_dir)
        print(f"report (with the latency table): {report}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``dualprune export RUN_DIR|CHECKPOINT --format packed|onnx|torch``."""
    from dualprune.pipeline.artifacts import load_artifact

    art = load_artifact(args.path)
    base = art.run_dir if art.run_dir is not None else art.source.parent
    if args.format == "packed":
        from dualprune.export import save_packed

        out = Path(args.out) if args.out else base / "model.packed.safetensors"
        info = save_packed(art.model, out, masks=art.masks, constraints=art.constraints)
        print(
            f"wrote {out}: {info.file_bytes:,} bytes (storage figure {info.storage.bytes:,} B, "
            f"header {info.header_bytes:,} B; dense fp32 {info.dense_bytes:,} B, "
            f"{info.dense_bytes / info.file_bytes:.1f}× smaller)"
        )
        return 0
    small = art.model
    if not args.no_compact:
        small, plan, _ = _compacted(art)
        print(
            f"compacted: {plan.params_before:,} → {plan.params_after:,} parameters, "
            f"{plan.macs_before:,} → {plan.macs_after:,} MACs per sample"
        )
    if args.format == "torch":
        from dualprune.export import save_torch

        out = Path(args.out) if args.out else base / "model.torch.safetensors"
        save_torch(small, out, {"model": art.name, "num_classes": art.num_classes})
        print(f"wrote {out}: {out.stat().st_size:,} bytes (load with dualprune.export.load_torch)")
        return 0
    from dualprune.export import export_onnx

    out = Path(args.out) if args.out else base / "model.onnx"
    onnx = export_onnx(small, art.example_input(), out)
    print(
        f"wrote {onnx.path}: {onnx.file_bytes:,} bytes, checked with onnxruntime "
        f"(max |difference| {onnx.max_abs_error:.2e})"
    )
    return 0


def cmd_widths(args: argparse.Namespace) -> int:
    """``dualprune widths MODEL|RUN_DIR``: channel widths that run fast on this CPU."""
    import torch

    from dualprune.speed.widths import search_widths

    if Path(args.model).exists():
        from dualprune.pipeline.artifacts import load_artifact

        art = load_artifact(args.model)
        model, x, source = art.model.eval(), art.random_input(2), str(art.source)
    else:
        from dualprune import models

        model = models.create(args.model, num_classes=args.num_classes).eval()
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, *models.spec(args.model).input_shape, generator=g)
        source = args.model
    found = search_widths(
        model,
        x,
        macs_ratio=args.macs_ratio,
        slack=args.slack,
        multiple_of=args.multiple_of,
        batch_size=args.batch_size,
        threads=args.threads,
        repeats=args.repeats,
        ignore=args.ignore,
        progress=print,
    )
    print()
    print(found)
    if args.json:
        out = {"model": source, "command": "widths", **found.as_dict()}
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


def _batch_sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,64, got '{text}'") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive, got '{text}'")
    return sizes


def register(sub: Any) -> None:
    """Add this module's subcommands to the ``dualprune`` subparsers ``sub``."""
    from dualprune.cli import hw

    where = "a run directory, a stage directory or a checkpoint.pt"
    p = sub.add_parser(
        "compact",
        help="physically remove pruned filters and channels",
        description=(
            "Remove pruned filters/channels of a run's final model (every coupled group "
            "through Torch-Pruning's dependency graph); outputs equal the masked model's. "
            "Zeros that cannot be removed (irregular, column, block) are reported. Writes "
            "compact/model.safetensors (with its architecture) and compact/compaction.json."
        ),
    )
    p.add_argument("path", help=where)
    p.add_argument("--out", metavar="DIR", help="default: RUN_DIR/compact")
    p.set_defaults(func=cmd_compact)

    p = sub.add_parser(
        "bench",
        help="measured latency: dense vs compacted vs sparse execution",
        description=(
            "Time the model dense, compacted and with sparse layers (swapped only where "
            "measured faster) at each batch size: fixed threads, warm-up, median of "
            "repeats, variants interleaved; shown next to the MACs ratio. Writes bench.json."
        ),
    )
    p.add_argument("path", help=where)
    p.add_argument(
        "--batch-sizes", type=_batch_sizes, default=(1, 64), metavar="B,B", help="default 1,64"
    )
    p.add_argument("--repeats", type=positive_int, default=20, help="timed repeats (20)")
    p.add_argument("--no-sparse", dest="sparse", action="store_false", help="skip sparse execution")
    p.add_argument("--json", metavar="FILE", help="default: RUN_DIR/bench.json")
    add_threads(p)
    p.set_defaults(func=cmd_bench, threads=1)

    p = sub.add_parser(
        "export",
        help="export as packed, ONNX or torch (safetensors + architecture)",
        description=(
            "packed: the weights in the code the report counts (values at their bits, "
            "bitmask, relative or Golomb-Rice indices, scales), restored bit for bit by "
            "dualprune.export.load_packed. onnx: the compacted model, checked with "
            "onnxruntime (pip install 'dualprune[export]'). torch: the compacted model's "
            "state dict plus its architecture, loaded without unpickling."
        ),
    )
    p.add_argument("path", help=where)
    p.add_argument("--format", choices=FORMATS, required=True)
    p.add_argument("--out", metavar="FILE", help="default: a file in the run directory")
    p.add_argument(
        "--no-compact", action="store_true", help="onnx/torch: export without compaction"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "widths",
        help="search channel widths that run fast on this CPU",
        description=(
            "Try every assignment of kept channel widths (one per class of coupled groups "
            "with the same channel count, multiples of --multiple-of) that cuts MACs by "
            "--macs-ratio to --macs-ratio*(1+--slack), compact and time each interleaved "
            "with the dense model, and print them fastest first (docs/speed.md)."
        ),
    )
    p.add_argument("model", help="a zoo model name (dualprune models) or " + where)
    p.add_argument("--macs-ratio", type=positive_float, default=2.0, help="default 2")
    p.add_argument("--slack", type=float, default=0.15, help="default 0.15")
    p.add_argument("--multiple-of", type=positive_int, default=8, help="default 8")
    p.add_argument("--batch-size", type=positive_int, default=64, help="default 64")
    p.add_argument("--repeats", type=positive_int, default=7, help="timed repeats (7)")
    p.add_argument("--num-classes", type=positive_int, default=10, help="zoo models (10)")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="MODULE",
        help="keep this module's output channels (repeatable), e.g. fc",
    )
    p.add_argument("--json", metavar="FILE", help="also write the result here")
    add_threads(p)
    p.set_defaults(func=cmd_widths, threads=1)
    hw.register(sub)


__all__ = ["FORMATS", "register"]
