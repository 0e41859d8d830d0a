"""Pure analysis of measured (or simulated) data: the same live and in replay."""
