"""What every benchmark script shares: the machine's name and the results table."""

from __future__ import annotations

import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
TABLE_HEADER = (
    "| benchmark | setting | result | target | command |",
    "|---|---|---|---|---|",
)


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, or the machine type."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def replace_rows(tag: str, rows: list[str]) -> None:
    """Replace the rows starting with ``| {tag}`` in results/README.md, keeping all others."""
    path = RESULTS / "README.md"
    lines = path.read_text().splitlines() if path.exists() else []
    if not lines:
        lines = [
            "# Benchmark results",
            "",
            "One row per measured quantity; the command "
            "reproduces it. Raw data in the JSON files beside this one.",
            "",
            *TABLE_HEADER,
        ]
    elif not any(line.startswith("| benchmark |") for line in lines):
        lines += ["", *TABLE_HEADER]
    lines = [line for line in lines if not line.startswith(f"| {tag}")]
    header_end = max(i for i, line in enumerate(lines) if line.startswith("|---"))
    end = header_end + 1
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    lines[end:end] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
