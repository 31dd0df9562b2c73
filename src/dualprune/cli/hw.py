"""``dualprune hw``: a run on memristor crossbars (mapping, cost, chips)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from dualprune.cli.args import add_data_dir, add_threads, json_out, positive_int
from dualprune.errors import ConfigError


def cmd_hw(args: argparse.Namespace) -> int:
    """``dualprune hw RUN_DIR|CHECKPOINT``: crossbars, energy, area; accuracy on chips."""
    from dualprune.pipeline.artifacts import load_artifact, test_loader
    from dualprune.pipeline.hwstage import HardwareOptions, hardware_summary
    from dualprune.train.config import parse

    art = load_artifact(args.path)
    recipe_hw = art.recipe.hardware if art.recipe is not None else None
    base: dict[str, Any] = recipe_hw.model_dump() if recipe_hw is not None else {}
    given = {k: getattr(args, k, None) for k in HardwareOptions.model_fields}
    options = parse(
        HardwareOptions, base | {k: v for k, v in given.items() if v is not None}, "options"
    )
    options.spec()  # a bad spec, noise or output file fails before any work
    options.device_noise()
    path = json_out(args, art.source, art.run_dir, "hardware.json")
    loader = None
    if options.noise is not None:
        dataset = args.dataset or art.dataset
        if dataset is None:
            raise ConfigError(f"'{art.source}' does not name its data set; pass --dataset")
        root = args.data_dir or (art.recipe.data_dir if art.recipe is not None else None)
        loader = test_loader(dataset, root, args.test_samples)
    hw, text = hardware_summary(
        art.model,
        options,
        art.example_input(),
        masks=art.masks,
        baseline=art.dense_model(),
        loader=loader,
    )
    print(text)
    path.write_text(json.dumps(hw, indent=1) + "\n")
    print(f"\nwrote {path}")
    return 0


def _hw_parser(sub: Any) -> None:
    p = sub.add_parser(
        "hw",
        help="crossbars, energy and area of a run on memristor crossbars",
        description=(
            "Map a run's final model (or a checkpoint) onto memristor crossbars: per-layer "
            "crossbars, DACs, ADCs and ADC bits; energy, area and latency per inference "
            "under a technology profile, with reductions against the dense model; with "
            "--noise, accuracy over Monte-Carlo programmed chips. Defaults come from the "
            "recipe's hardware section when it has one. Writes hardware.json."
        ),
    )
    p.add_argument("path", help="a run directory, a stage directory or a checkpoint.pt")
    # option dests are HardwareOptions' field names: cmd_hw reads them by name
    p.add_argument("--xbar", dest="crossbar", metavar="RxC", help="crossbar size (128x128)")
    p.add_argument("--profile", help="isaac32, neurosim22 or neurosim22-xbar (default isaac32)")
    p.add_argument("--weight-bits", type=positive_int, metavar="B", help="default 8")
    p.add_argument("--cell-bits", type=positive_int, metavar="C", help="default 2")
    p.add_argument("--mapping", choices=["differential", "offset"], help="default differential")
    p.add_argument("--dac-bits", type=positive_int, metavar="D", help="default 1")
    p.add_argument("--input-bits", type=positive_int, metavar="A", help="default 8")
    p.add_argument("--adc-mux", type=positive_int, metavar="N", help="columns per ADC (8)")
    p.add_argument(
        "--layout",
        choices=["best", "compact", "grid"],
        help="how pruned rows/columns are placed on tiles (default best)",
    )
    p.add_argument(
        "--noise",
        metavar="SPEC",
        help="device noise, e.g. 'sigma=0.02,read=0.01,stuck_min=0.001' (docs/devices.md)",
    )
    p.add_argument("--chips", type=positive_int, metavar="N", help="programmed chips (10)")
    p.add_argument("--seed", type=int, help="seed of the first chip (0)")
    p.add_argument("--dataset", help="test set for --noise (default: the run's)")
    # data root default: the recipe's data_dir, then $DUALPRUNE_DATA
    p.add_argument(
        "--test-samples", type=positive_int, metavar="N", help="a fixed random test subset"
    )
    p.add_argument("--json", metavar="FILE", help="default: RUN_DIR/hardware.json")
    add_data_dir(p)
    add_threads(p)
    p.set_defaults(func=cmd_hw)


def register(sub: Any) -> None:
    """Add ``hw`` to the ``dualprune`` subparsers ``sub``."""
    _hw_parser(sub)
