"""gainloop: hardware-in-the-loop optimisation and digital twin for CQD infrared lasers.

This package is the service layer (CLI, config, catalog wiring, reports). Its
``gainloop.errors`` module is a leaf (it imports nothing of the project) and is the
one exception hierarchy every layer raises from.
"""

__version__ = "0.1.0"
