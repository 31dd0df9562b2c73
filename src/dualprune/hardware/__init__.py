"""What a compressed model costs on hardware (docs/algorithms.md §6, docs/hardware.md).

- :class:`CrossbarSpec`: the crossbar, its cells and converters.
- :func:`map_model`: the GEMM view of every layer cut into crossbar tiles.
- :func:`crossbar_plan`: constraints aligned with the tiles.
- :func:`cost` / :func:`cost_vs_dense`: energy, area and latency under a named profile.
- :class:`DeviceNoise`, :func:`program_chip`, :func:`evaluate_on_chips`,
  :func:`read_faults`, :func:`pin_faults`: device non-idealities, Monte-Carlo
  accuracy over chips, fault-aware retraining (docs/devices.md).

Reads models and masks; never imports solvers.
"""

from dualprune.hardware.chips import ChipsResult, built_cells, evaluate_on_chips, program_chip
from dualprune.hardware.conductance import (
    Conductances,
    built_weights,
    conductances_to_weights,
    grid_levels,
    to_levels,
    weights_to_conductances,
)
from dualprune.hardware.cost import CostReport, LayerCost, cost, cost_vs_dense
from dualprune.hardware.crossbar import (
    LAYOUTS,
    CrossbarReport,
    LayerMap,
    TileMap,
    cell_levels,
    map_model,
    weight_levels,
)
from dualprune.hardware.devices import DeviceNoise, Faults, program, read
from dualprune.hardware.faults import (
    FaultReads,
    PinnedFaults,
    fault_levels,
    fault_masks,
    pin_faults,
    pinned_values,
    read_faults,
)
from dualprune.hardware.plan import CROSSBAR_STRUCTURES, crossbar_block, crossbar_plan
from dualprune.hardware.profiles import (
    PROFILES,
    FormulaADC,
    Profile,
    Quantity,
    TableADC,
    get_profile,
)
from dualprune.hardware.spec import MAPPINGS, CrossbarSpec, adc_bits

__all__ = [
    "CROSSBAR_STRUCTURES",
    "LAYOUTS",
    "MAPPINGS",
    "PROFILES",
    "ChipsResult",
    "Conductances",
    "CostReport",
    "CrossbarReport",
    "CrossbarSpec",
    "DeviceNoise",
    "FaultReads",
    "Faults",
    "FormulaADC",
    "LayerCost",
    "LayerMap",
    "PinnedFaults",
    "Profile",
    "Quantity",
    "TableADC",
    "TileMap",
    "adc_bits",
    "built_cells",
    "built_weights",
    "cell_levels",
    "conductances_to_weights",
    "cost",
    "cost_vs_dense",
    "crossbar_block",
    "crossbar_plan",
    "evaluate_on_chips",
    "fault_levels",
    "fault_masks",
    "get_profile",
    "grid_levels",
    "map_model",
    "pin_faults",
    "pinned_values",
    "program",
    "program_chip",
    "read",
    "read_faults",
    "to_levels",
    "weight_levels",
    "weights_to_conductances",
]
