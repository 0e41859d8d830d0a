"""gainloop: hardware-in-the-loop optimisation and digital twin for CQD infrared lasers.

This package is the service layer (CLI, config, catalog wiring, reports): it wires the
plans, the optimiser and the devices or the twin. No other layer imports it; the
exception tree every layer raises from lives in the leaf package ``core``.
"""

__version__ = "0.1.0"
