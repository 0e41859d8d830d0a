"""The test and benchmark harness: IOC processes and CA helpers, captured documents, fault scenarios,
signal trials; used by tests/ and benchmarks/, not installed.

Modules: ``ioc`` (the twin's IOC in a subprocess, caproto's CA helpers, the process's CA port
pool, and the ``ca_pool``/``control_layer`` fixtures that ``tests/conftest.py`` registers),
``documents`` (a RunEngine's documents as emitted, one stream's events), ``faults`` (the fault
scenarios, run by ``tests/faults/`` and ``benchmarks/fault_matrix.py``), ``signals`` (signal
trials against gainloop's commands, run by ``tests/test_bench_signals.py`` and
``benchmarks/signal_matrix.py``).

Nothing here imports ``tests``. The tests import it from the repository root (their working
directory); the benchmarks put the root on ``sys.path`` first.
"""
