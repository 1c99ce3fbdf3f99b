"""perturbcast: the tooling of the expression forecasting benchmark.

Layers, each using only those before it: config (viash configs) -> viash (one executable's
semantics) -> runner (`run`, `test`) -> engine (`benchmark`) -> scoring -> report; `cli` on top.
"""
__version__ = "0.1.0"
