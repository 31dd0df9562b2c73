"""``dualprune report RUN_DIR``: the report of a run, rebuilt from its files alone.

Reads ``run.json`` (model, classes, input shape), ``recipe.yaml`` (the plan and
solver), ``model.safetensors`` (final weights), each stage's ``metrics.jsonl``
and result file and ``compress/updates.jsonl``; needs no data set. The
pipeline calls it at the end of every run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from dualprune import models
from dualprune.errors import CheckpointError, UnknownNameError
from dualprune.report.report import build_report, terminal_table, write_report
from dualprune.train.run import read_jsonl

__all__ = ["STAGES", "load_run_model", "read_stages", "report_run"]


def _mark_coupled(report: dict[str, Any], tied: set[str]) -> None:
    """Add ``coupled`` to the structure of every layer whose weight coupled channels cut."""
    for entry in report["layers"]:
        if f"{entry['name']}.weight" in tied:
            s = entry.get("structure") or "dense"
            entry["structure"] = "coupled" if s == "dense" else f"{s}+coupled"


# (stage, file with its test accuracy and loss), in run order
STAGES = (
    ("pretrained", "pretrained.json"),
    ("pretrain", "pretrain/done.json"),
    ("compress", "compress/done.json"),
    ("hard_prune", "hard_prune.json"),
    ("retrain", "retrain/done.json"),
    ("final", "final.json"),
)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"'{path}' is missing or not valid JSON ({err})") from None


def _lines(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path)


def read_stages(out: Path) -> dict[str, dict[str, float]]:
    """Test accuracy and loss after each stage the run finished, in run order."""
    return {name: _json(out / f) for name, f in STAGES if (out / f).exists()}


def load_run_model(out: str | os.PathLike[str]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The final model of a run directory and its ``run.json``.

    Raises:
        CheckpointError: not a run directory, or its files are missing or corrupt.
    """
    out = Path(out)
    if not (out / "run.json").is_file() or not (out / "model.safetensors").is_file():
        raise CheckpointError(
            f"'{out}' is not a finished run directory (needs run.json and model.safetensors; "
            "run 'dualprune run RECIPE --out DIR' first)"
        )
    info = _json(out / "run.json")
    keys = ("model", "num_classes", "dataset", "input_shape")
    if not isinstance(info, dict) or any(k not in info for k in keys):
        raise CheckpointError(
            f"'{out / 'run.json'}' is damaged: a run writes a mapping with {', '.join(keys)}"
        )
    if not isinstance(info["num_classes"], int):
        raise CheckpointError(f"'{out / 'run.json'}' is damaged: num_classes is not an int")
    try:
        model = models.create(str(info["model"]), num_classes=info["num_classes"])
    except UnknownNameError as err:
        raise CheckpointError(f"'{out / 'run.json'}': {err}") from None
    try:
        state = load_file(str(out / "model.safetensors"))
    except Exception as err:
        raise CheckpointError(f"'{out / 'model.safetensors'}' is corrupt ({err})") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(
            f"'{out / 'model.safetensors'}' does not fit {info['model']}: {first}"
        ) from None
    return model.eval(), info


def report_run(out: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write ``report.md``, ``report.json`` and the plots of a run; return (path, table).

    Raises:
        CheckpointError: ``out`` is not a finished run directory.
    """
    from dualprune.pipeline.recipe import read_recipe_text, recipe_mapping, validate

    out = Path(out)
    model, info = load_run_model(out)
    recipe_file = out / "recipe.yaml"
    if not recipe_file.is_file():
        raise CheckpointError(f"'{out}' is not a finished run directory (recipe.yaml is missing)")
    where = str(recipe_file)
    recipe = validate(recipe_mapping(read_recipe_text(recipe_file), where), where)
    plan = recipe.build_plan()
    constraints = plan.resolve(model) if plan is not None else {}
    stages = read_stages(out)
    histories = {
        name: rows
        for name in ("pretrain", "compress", "retrain")
        if (rows := _lines(out / name / "metrics.jsonl"))
    }
    summary = {"model": info["model"], "dataset": info["dataset"]}
    if recipe.solver is not None:
        options = recipe.solver.model_dump()
        name = options.pop("name")
        summary["solver"] = f"{name}: " + ", ".join(
            f"{k}={v}" for k, v in options.items() if v is not None
        )
    for name in ("pretrain", "compress", "retrain"):
        cfg = getattr(recipe, name)
        if cfg is not None and cfg.epochs:
            summary[f"{name} epochs"] = str(cfg.epochs)
    if recipe.pretrained:
        summary["pretrained"] = recipe.pretrained
    example = torch.zeros(1, *info["input_shape"])
    coupled = recipe.build_coupled(model, example.expand(2, *example.shape[1:]))
    if coupled is not None:
        summary["coupled"] = (
            f"{len(coupled.groups)} groups of coupled channels, ratio {coupled.ratio} of "
            f"channels (not weights), multiple_of {coupled.multiple_of}"
        )
    report = build_report(model, example, constraints, stages=stages, summary=summary)
    if coupled is not None:
        _mark_coupled(report, set(coupled.params))
    report["recipe"] = recipe.model_dump(mode="json")
    hw_file = out / "hardware.json"
    hw = json.loads(hw_file.read_text()) if hw_file.is_file() else None
    if hw is not None:
        report["hardware"] = {k: v for k, v in hw.items() if k != "mapping"}
    path = write_report(
        out,
        report,
        histories=histories,
        updates=_lines(out / "compress" / "updates.jsonl"),
        title=f"{info['model']} on {info['dataset']}",
    )
    if hw is not None:
        from dualprune.pipeline.hwstage import hardware_markdown

        with path.open("a") as f:
            f.write("\n" + hardware_markdown(hw))
    bench_file = out / "bench.json"
    if bench_file.is_file():
        with path.open("a") as f:
            f.write("\n" + speed_markdown(json.loads(bench_file.read_text())))
    return path, terminal_table(report)


def speed_markdown(bench: dict[str, Any]) -> str:
    """The report's speed section from ``dualprune bench``'s ``bench.json``."""
    lines = [
        "## Measured latency (`dualprune bench`)",
        "",
        "Median of repeats after warm-up, variants interleaved, fixed threads; "
        "'realised' is the measured speedup over the MACs ratio.",
        "",
        "| batch | variant | threads | median ms | speedup | MACs ratio | realised |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, entry in bench.get("batches", {}).items():
        for name, v in entry["latency"]["variants"].items():
            t = next(t for t in v["timings"] if str(t["batch_size"]) == str(batch))
            speedup, ratio = v["speedup"][str(batch)], v.get("macs_ratio")
            realised = f"{100 * speedup / ratio:.0f}%" if ratio else ""
            ratio_text = f"{ratio:.2f}×" if ratio else ""
            lines.append(
                f"| {batch} | {name} | {v['threads']} | {t['median_ms']:.4g} | "
                f"{speedup:.2f}× | {ratio_text} | {realised} |"
            )
    return "\n".join(lines) + "\n"
