"""Filter pruning to 2× fewer MACs: dualprune's compacted model vs Torch-Pruning's.

From ONE pretrained CIFAR ResNet (``--model resnet20`` or ``resnet56``), both
methods remove whole channels down to ``--macs-target`` (0.5) of the dense MACs
and then train for the same budget, with the same optimizer, schedules and data
order: ``--solver-epochs`` at a constant lr, then ``--finetune-epochs`` with a
cosine lr (SGD Nesterov). Measured: test accuracy, parameters, MACs, and the
latency of dense, dualprune and Torch-Pruning models in ONE interleaved
``compare_latency`` call at batch 1 and 64 (``--threads``): speedup, MACs ratio
and their quotient "realised" (target ≥ 0.8 at batch 64).

dualprune. The groups of ``channel_groups`` are split in two, and the solver
(SLR or ADMM) drives both parts together:

- chain groups (a block's ``conv1`` filters, read only by its ``conv2``): a
  per-layer ``Sparsity(r, "channel")`` on the reader's input channels;
  compaction removes ``conv1``'s filters and BatchNorm entries with them;
- residual groups (stem, each block's ``conv2``, the downsample convs, ``fc``'s
  inputs): one ``dp.Coupled`` set passed as ``coupled=``, whose Z-step projects
  every tied tensor at once (Π_{S_G}, docs/constraints.md).

How many channels each group keeps (``--widths``):

- ``uniform``: one channel ratio r serves both: the smallest r (bisection) at which the
compaction plan of the magnitude-projected pretrained model has MACs ≤ target ×
dense. Both keep a multiple of ``--multiple-of`` M (8) channels in every group
(``Sparsity(r, "channel", multiple_of=M)``, ``coupled_masks(..., multiple_of=M)``;
a group of at most M channels keeps all), since oneDNN's convolutions work on
blocks of 8 or 16 channels and pad the rest; ``--multiple-of 1`` is the plain
count.
- ``search``: ``dp.search_widths`` times every assignment of kept widths per
  class of groups with the same channel count (one per stage; multiples of M)
  whose MACs cut lies in [1/target, 1.15/target] and keeps the fastest at batch
  64 on this machine (docs/speed.md); ``K1/K2/K3`` gives the widths directly
  (increasing channel count: ``8/16/64`` keeps 8 of 16, 16 of 32, 64 of 64).
  Chain groups then get ``Sparsity(1 − k/C, "channel")`` and residual groups
  per-group ratios in ``dp.Coupled``.

After the solver phase: hard prune (its masks hold both parts),
``compact``, then plain fine-tuning of the small dense model.

Torch-Pruning: ``MagnitudePruner`` (L2 magnitude, ``fc`` ignored), one-shot from
the pretrained model, ``pruning_ratio`` by bisection to the MACs nearest
dualprune's (both counted by ``dualprune.size.metrics.dense_macs``); then the same two
training phases, without a solver.

Writes benchmarks/results/compact_<model>.json and ``| compact:`` rows in
benchmarks/results/README.md; ``--out-json PATH`` writes the JSON there instead
and leaves the README alone (smoke runs).

Usage:
    python benchmarks/bench_compact.py --data-dir ../shared/data --train-samples 20000 \\
        --pretrain-epochs 12 --solver-epochs 3 --finetune-epochs 5
    python benchmarks/bench_compact.py --data-dir ../shared/data --train-samples 512 \\
        --test-samples 500 --pretrain-epochs 1 --solver-epochs 1 --finetune-epochs 1 \\
        --repeats 3 --work /tmp/bench-compact --out-json /tmp/compact.json  # smoke test
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import shlex
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch_pruning as tp
from common import RESULTS, cpu_model, replace_rows  # benchmarks/common.py
from torch import Tensor, nn

import dualprune as dp
from dualprune import data, models
from dualprune.compaction.remove import CompactionResult, compact, compaction_result
from dualprune.constraints.groups import ChannelGroup, coupled_masks
from dualprune.graph import channel_groups
from dualprune.pipeline.stages import load_pretrained, subset
from dualprune.size.metrics import dense_macs
from dualprune.solvers import ADMM, SLR
from dualprune.speed.latency import compare_latency
from dualprune.train import TrainConfig, evaluate, fit


def split_groups(groups: Sequence[ChannelGroup]) -> tuple[list[str], list[ChannelGroup]]:
    """(reader layers of chain groups, residual groups).

    A chain group ties one layer's filters to one reader's input channels and
    nothing else but biases and BatchNorm; every other group is residual.
    """
    readers, residual = [], []
    for g in groups:
        weights = [s for s in g.slices if s.role == "weight"]
        ins = [s for s in weights if s.dim == 1]
        if len(weights) == 2 and len(ins) == 1:
            readers.append(ins[0].param.removesuffix(".weight"))
        else:
            residual.append(g)
    return readers, residual


def split_chain(groups: Sequence[ChannelGroup]) -> tuple[list[str], list[ChannelGroup]]:
    """(reader layers of chain groups, those chain groups), in the same order."""
    readers, chain = [], []
    for g in groups:
        reader, _ = split_groups([g])
        if reader:
            readers += reader
            chain.append(g)
    return readers, chain


def channel_masks(
    model: nn.Module,
    readers: list[str],
    residual: list[ChannelGroup],
    ratio: float,
    multiple_of: int = 8,
) -> dict[str, Tensor]:
    """Masks (True = kept) of the readers' input channels ∧ the residual groups' channels.

    Both by magnitude at the current weights (what the bisection plans with);
    every kept count is a multiple of ``multiple_of`` (or the whole group).
    """
    constraints = {n: reader_constraint(ratio, multiple_of) for n in readers}
    per_layer = dp.Masks.from_constraints(model, constraints)
    params = dict(model.named_parameters())
    masks = coupled_masks(params, residual, ratio, multiple_of=multiple_of)
    for name in per_layer.names:
        masks[name] = masks[name] & per_layer[name] if name in masks else per_layer[name]
    return masks


def reader_constraint(ratio: float, multiple_of: int) -> dp.Sparsity:
    """The solver's set on a chain group's reader: its input channels, counts rounded."""
    return dp.Sparsity(ratio, "channel", multiple_of=multiple_of)


def bisect(
    f: Callable[[float], float], target: float, hi: float, steps: int
) -> tuple[float, float]:
    """Bisection on a non-increasing f over [0, hi]: (lo, hi) with f(lo) > target ≥ f(hi)."""
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if f(mid) <= target else (mid, hi)
    return lo, hi


def tp_prune(dense: nn.Module, x: Tensor, ratio: float) -> nn.Module:
    """A copy of ``dense`` pruned one-shot by Torch-Pruning's MagnitudePruner (L2, fc kept)."""
    m = copy.deepcopy(dense).eval()
    importance = tp.importance.MagnitudeImportance(p=2)
    tp.pruner.MagnitudePruner(
        m, x, importance=importance, pruning_ratio=ratio, ignored_layers=[m.fc]
    ).step()
    return m


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs_of(model: nn.Module, x: Tensor) -> int:
    return sum(dense_macs(model, x).values())


def main() -> None:
    """Pretrain (or load), prune both ways, train both, time all three, write results."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20", choices=["resnet20", "resnet56"])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-samples", type=int, default=None)
    p.add_argument("--test-samples", type=int, default=None)
    p.add_argument("--pretrained", default=None, help="checkpoint.pt, run dir or .safetensors")
    p.add_argument("--pretrain-epochs", type=int, default=12)
    p.add_argument("--pretrain-lr", type=float, default=0.1)
    p.add_argument("--macs-target", type=float, default=0.5, help="MACs after / dense MACs")
    p.add_argument(
        "--multiple-of",
        type=int,
        default=8,
        metavar="M",
        help="kept channels of every group are a multiple of M (or all of them); 1 = any count",
    )
    p.add_argument(
        "--widths",
        default="uniform",
        help="uniform (one channel ratio), search (measured fastest), or K/K/K per stage",
    )
    p.add_argument("--solver", default="slr", choices=["slr", "admm"])
    p.add_argument("--rho", type=float, default=0.1)
    p.add_argument("--solver-epochs", type=int, default=3)
    p.add_argument("--finetune-epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.01, help="lr of both post-pruning phases")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--work", default="runs/bench-compact")
    p.add_argument("--out-json", default=None, help="write the JSON here, not into results/")
    args = p.parse_args()
    if args.multiple_of < 1:
        p.error(f"--multiple-of {args.multiple_of} is not allowed; use a positive int such as 8")
    mult = args.multiple_of
    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    ds = data.load("cifar10", root=args.data_dir)
    train_x, train_y = subset(ds.train_x, ds.train_y, args.train_samples)
    test_x, test_y = subset(ds.test_x, ds.test_y, args.test_samples)
    bs = args.batch_size

    def train_loader(seed: int) -> data.Loader:
        return data.Loader(
            train_x, train_y, batch_size=bs, mean=ds.mean, std=ds.std,
            shuffle=True, augment=ds.augment, seed=seed,
        )  # fmt: skip

    test_loader = data.Loader(
        test_x, test_y, batch_size=1000, mean=ds.mean, std=ds.std, shuffle=False, augment=False
    )
    x = next(iter(test_loader))[0][:64]  # real normalised images, (64, 3, 32, 32)
    x2 = x[:2]
    work = Path(args.work) / f"{args.model}-n{len(train_y)}"
    meta = {"model_name": args.model}

    # 1. the dense model, pretrained once and cached
    torch.manual_seed(0)
    dense = models.create(args.model, num_classes=ds.num_classes)
    if args.pretrained:
        load_pretrained(dense, args.pretrained, args.model)
    else:
        cfg = TrainConfig(
            epochs=args.pretrain_epochs, batch_size=bs, lr=args.pretrain_lr, nesterov=True,
            schedule="cosine",
        )  # fmt: skip
        fit(dense, train_loader(0), test_loader, cfg, work / "pretrain", meta=meta, resume=True)
    dense.eval()
    dense_acc = evaluate(dense, test_loader)["acc"]
    dense_macs_total = macs_of(dense, x2)
    print(f"dense {args.model}: {100 * dense_acc:.2f}%, {dense_macs_total / 1e6:.2f}M MACs")

    # the same two phases for both methods: same optimizer, schedules and data order
    phase1 = TrainConfig(
        epochs=args.solver_epochs, batch_size=bs, lr=args.lr, nesterov=True, schedule="constant"
    )
    phase2 = TrainConfig(
        epochs=args.finetune_epochs, batch_size=bs, lr=args.lr, nesterov=True, schedule="cosine"
    )

    # 2. dualprune: the kept channels (one ratio by bisection, or per-stage widths)
    groups = channel_groups(dense, x2, ignore=["fc"])
    readers, residual = split_groups(groups)
    target = args.macs_target * dense_macs_total
    width_search = None
    if args.widths == "uniform":

        def plan_macs(r: float) -> float:
            masks = channel_masks(dense, readers, residual, r, multiple_of=mult)
            return compaction_result(dense, x2, masks).macs_after

        t0 = time.perf_counter()
        if plan_macs(0.95) > target:
            p.error(
                f"--macs-target {args.macs_target} is out of reach with --multiple-of {mult} "
                f"(ratio 0.95 keeps {plan_macs(0.95) / dense_macs_total:.2f} of the MACs); "
                "raise the target or lower M"
            )
        ratio: float | dict[str, int] = bisect(plan_macs, target, hi=0.95, steps=8)[1]
        print(f"channel ratio r = {ratio:.4f} ({time.perf_counter() - t0:.1f} s of bisection)")
        plan = {n: reader_constraint(ratio, mult) for n in readers}
        coupled = dp.Coupled(residual, ratio, multiple_of=mult)
    else:
        classes = sorted({g.channels for g in groups})
        if args.widths == "search":
            width_search = dp.search_widths(
                dense, x, macs_ratio=1 / args.macs_target, multiple_of=mult, batch_size=64,
                threads=args.threads, ignore="fc", progress=print,
            )  # fmt: skip
            print(width_search)
            widths = width_search.best.widths
        else:
            try:
                widths = dict(zip(classes, map(int, args.widths.split("/")), strict=True))
            except ValueError:
                p.error(f"--widths {args.widths}: give {len(classes)} ints like 8/16/64")
        ratio = {str(c): k for c, k in widths.items()}
        print(f"kept widths per channel count: {ratio}")
        chain = {n: g.channels for n, g in zip(*split_chain(groups), strict=True)}
        plan = {n: dp.Sparsity(1 - widths[c] / c, "channel") for n, c in chain.items()}
        coupled = dp.Coupled(residual, [1 - widths[g.channels] / g.channels for g in residual])
    model = copy.deepcopy(dense).train()
    solver = (SLR if args.solver == "slr" else ADMM)(model, plan, coupled=coupled, rho=args.rho)
    curves = {}  # test accuracy per epoch of every training phase
    curves["dualprune solver"] = fit(
        model, train_loader(1), test_loader, phase1, work / "dp-solver", meta=meta, solver=solver
    )
    masks = solver.hard_prune()  # reader channels ∧ residual groups, all scored on W
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = compact(model.eval(), x2, masks)
    leftovers = [str(w.message) for w in caught]
    cplan = CompactionResult.from_dict(small.dualprune_compaction)
    print(str(cplan).splitlines()[-1], *leftovers, sep="\n")
    dp_hard_acc = evaluate(small, test_loader)["acc"]
    curves["dualprune fine-tune"] = fit(
        small, train_loader(2), test_loader, phase2, work / "dp-finetune", meta=meta
    )

    # 3. Torch-Pruning: one-shot magnitude pruning to the same MACs, same training budget
    dp_macs = macs_of(small, x2)

    def tp_macs_at(r: float) -> int:
        return macs_of(tp_prune(dense, x2, r), x2)

    bounds = bisect(tp_macs_at, dp_macs, hi=0.95, steps=12)  # nearest on either side
    tp_ratio = min(bounds, key=lambda r: abs(tp_macs_at(r) - dp_macs))
    tp_model = tp_prune(dense, x2, tp_ratio)
    tp_macs = macs_of(tp_model, x2)
    print(f"torch-pruning ratio {tp_ratio:.4f}: {tp_macs / 1e6:.2f}M MACs vs {dp_macs / 1e6:.2f}M")
    tp_hard_acc = evaluate(tp_model, test_loader)["acc"]
    curves["torch-pruning phase 1"] = fit(
        tp_model, train_loader(1), test_loader, phase1, work / "tp-phase1", meta=meta
    )
    curves["torch-pruning fine-tune"] = fit(
        tp_model, train_loader(2), test_loader, phase2, work / "tp-phase2", meta=meta
    )

    # 4. accuracy and latency of all three
    variants = {"dense": dense, "dualprune": small, "torch-pruning": tp_model}
    macs = {"dense": dense_macs_total, "dualprune": dp_macs, "torch-pruning": tp_macs}
    latency = compare_latency(
        variants, x, batch_sizes=(1, 64), threads=args.threads, repeats=args.repeats, macs=macs
    )
    acc = {name: evaluate(m, test_loader)["acc"] for name, m in variants.items()}
    after_prune = {"dense": dense_acc, "dualprune": dp_hard_acc, "torch-pruning": tp_hard_acc}
    print(latency)
    print(f"{'variant':<14} {'params':>9} {'MACs':>9} {'acc pruned':>10} {'acc final':>9}")
    for name, m in variants.items():
        print(
            f"{name:<14} {n_params(m):>9,} {macs[name] / 1e6:>8.2f}M "
            f"{100 * after_prune[name]:>9.2f}% {100 * acc[name]:>8.2f}%"
        )

    # 5. results
    command = "python " + shlex.join(sys.argv)
    lat = latency.as_dict()["variants"]
    results = {
        name: {
            "params": n_params(m),
            "macs": macs[name],
            "macs_ratio": latency.macs_ratio(name),
            "acc_after_prune": after_prune[name],
            "acc": acc[name],
            "speedup": {b: latency.speedup(name, b) for b in (1, 64)},
            "realised": {b: latency.speedup(name, b) / latency.macs_ratio(name) for b in (1, 64)},
            "latency": lat[name],
        }
        for name, m in variants.items()
    }
    record = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "cpu": cpu_model(),
        "threads": args.threads,
        "model": args.model,
        "train_samples": len(train_y),
        "test_samples": len(test_y),
        "pretrained": args.pretrained,
        "pretrain_epochs": None if args.pretrained else args.pretrain_epochs,
        "macs_target": args.macs_target,
        "multiple_of": mult,
        "channel_ratio": ratio,
        "widths": args.widths,
        "width_search": None if width_search is None else width_search.as_dict(),
        "tp_pruning_ratio": tp_ratio,
        "solver": {"name": args.solver, **getattr(solver, "settings", dict)()},
        "solver_layers": readers,
        "residual_groups": [g.root for g in residual],
        "phase1": phase1.model_dump(mode="json"),
        "phase2": phase2.model_dump(mode="json"),
        "compaction_result": cplan.as_dict(),
        "compaction_warnings": leftovers,
        "solver_history": solver.history,
        "training": curves,
        "wall_s": time.perf_counter() - t_start,
        "results": results,
    }
    out = Path(args.out_json) if args.out_json else RESULTS / f"compact_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1))
    print(f"wrote {out} ({record['wall_s']:.0f} s in all)")
    if args.out_json:
        return
    setting = (
        f"CIFAR-10, {len(train_y)} train samples, pretrained "
        f"{args.pretrained or f'{args.pretrain_epochs} ep'} ({100 * dense_acc:.2f}%); "
        f"{args.solver_epochs} + {args.finetune_epochs} ep training; "
        f"kept channels {'multiple of ' + str(mult) if args.widths == 'uniform' else ratio}; "
        f"{args.threads} threads, {cpu_model()}"
    )
    rows = []
    for name in ("dualprune", "torch-pruning"):
        r = results[name]
        rows.append(
            f"| compact: {args.model} {name} | {setting} | acc {100 * r['acc']:.2f}% "
            f"(dense {100 * dense_acc:.2f}%), {r['macs_ratio']:.2f}× fewer MACs, "
            f"{r['params']:,} params; speedup {r['speedup'][1]:.2f}× (batch 1), "
            f"{r['speedup'][64]:.2f}× (batch 64), realised {r['realised'][64]:.2f} | "
            f"realised ≥ 0.8 at batch 64 | `{command}` |"
        )
    replace_rows(f"compact: {args.model}", rows)


if __name__ == "__main__":
    main()
