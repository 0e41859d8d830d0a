"""The RE worker's startup module: ``start-re-manager --startup-module gainloop.queueserver.startup``.

Imported by the queueserver each time the worker environment opens; its namespace
(``RE``, the bench's devices, gainloop's plans, ``bench_status``) is what users can run.
Settings come from the environment (``gainloop.queueserver.ProfileSettings``):
``$GAINLOOP_CATALOG_URI`` + ``$TILED_API_KEY`` (else the embedded catalog in
``$GAINLOOP_DATA_DIR``), ``$GAINLOOP_BENCH_FILE`` (else the twin), ``$GAINLOOP_TWIN_SEED``.
"""

from gainloop.queueserver._profile import build_namespace as _build_namespace

globals().update(_build_namespace())
del _build_namespace
