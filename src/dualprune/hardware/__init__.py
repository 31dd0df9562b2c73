"""What a compressed model costs on hardware (docs/algorithms.md §6).

Reads models and masks; never imports solvers.
"""

from dualprune.hardware.spec import MAPPINGS, CrossbarSpec, adc_bits

__all__ = ["MAPPINGS", "CrossbarSpec", "adc_bits"]
