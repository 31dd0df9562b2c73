"""Reports: per-layer tables (terminal and Markdown), JSON and plots of a compressed model.

- :mod:`~dualprune.report.report`: :func:`build_report`, the tables and :func:`write_report`.
- :mod:`~dualprune.report.plots`: accuracy, residual and sparsity plots.
"""

from dualprune.report.report import build_report, layer_table, terminal_table, write_report

__all__ = ["build_report", "layer_table", "terminal_table", "write_report"]
