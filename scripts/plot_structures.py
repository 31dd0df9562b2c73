"""Draw every sparsity structure's mask on one conv weight: docs/img/structures.png.

Each panel is the GEMM view G (rows = in·kh·kw inputs, grouped by input channel;
columns = out filters) of the same random Conv2d weight (16, 8, 3, 3) after
``Sparsity(...).mask``; kept weights are dark. Thin lines separate input
channels, thick red lines the tiles of ``block=(24, 8)``.

Usage:
    python scripts/plot_structures.py [--out docs/img/structures.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from dualprune.constraints import Sparsity, gemm_view

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (16, 8, 3, 3)  # (out, in, kh, kw): GEMM view 72 × 16
BLOCK = (24, 8)
PANELS = [  # (title, constraint)
    ("irregular\n0.5", Sparsity(0.5)),
    ("filter\n0.5", Sparsity(0.5, "filter")),
    ("channel\n0.5", Sparsity(0.5, "channel")),
    ("column\n0.5", Sparsity(0.5, "column")),
    ("pattern\n0.7 (p=4)", Sparsity(0.7, "pattern")),
    ("nm\n2:4", Sparsity(0.5, "nm", n=2, m=4)),
    ("block\n0.5, 24×8", Sparsity(0.5, "block", block=BLOCK)),
    ("tile_rows\n0.5, 24×8", Sparsity(0.5, "tile_rows", block=BLOCK)),
    ("tile_cols\n0.5, 24×8", Sparsity(0.5, "tile_cols", block=BLOCK)),
]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "structures.png")
    args = parser.parse_args(argv)
    w = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    rows, cols = gemm_view(w).shape
    fig, axes = plt.subplots(1, len(PANELS), figsize=(1.25 * len(PANELS), 5.2), sharey=True)
    for ax, (title, c) in zip(axes, PANELS, strict=True):
        kept = gemm_view(c.mask(w)).float()
        ax.imshow(kept, cmap="Greys", vmin=0, vmax=1.4, aspect="auto", interpolation="nearest")
        ax.set_title(f"{title}\n{int(kept.sum())}/{kept.numel()} kept", fontsize=8)
        for r in range(9, rows, 9):  # input channels
            ax.axhline(r - 0.5, color="0.75", lw=0.4)
        if "block" in c.options:
            for r in range(BLOCK[0], rows, BLOCK[0]):
                ax.axhline(r - 0.5, color="tab:red", lw=1.2)
            for k in range(BLOCK[1], cols, BLOCK[1]):
                ax.axvline(k - 0.5, color="tab:red", lw=1.2)
        ax.set_xticks([0, cols - 1])
        ax.set_xlabel("out", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("in·kh·kw (GEMM rows)", fontsize=8)
    fig.suptitle(f"Sparsity masks on a Conv2d weight {SHAPE}, GEMM view", fontsize=10)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
