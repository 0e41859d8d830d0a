"""gainloop's plans and devices behind bluesky-queueserver.

``gainloop qserver start`` (or ``prepare`` + ``manager_argv``) starts the RE Manager on
the startup module ``gainloop.queueserver.startup``: a RunEngine writing into the
catalog, the bench's devices (EPICS or the twin), every measurement plan of
``plans.registry`` and ``campaign_plan``, with their arguments described so that the
queueserver validates them when an item is submitted. The manager's 0MQ sockets bind
127.0.0.1 unless an interface is named; its queue lives in Redis under a name prefix.
"""

from gainloop.queueserver._manager import (
    EXISTING_PLANS_DEVICES_FILE,
    PERMISSIONS_FILE,
    ManagerSettings,
    manager_argv,
    permissions,
    prepare,
    write_existing_plans_devices,
    write_permissions,
)
from gainloop.queueserver._profile import (
    ENV_BENCH_FILE,
    ENV_CATALOG_URI,
    ENV_TWIN_SEED,
    FUNCTION_NAMES,
    ProfileSettings,
    QueueServerError,
    build_namespace,
    plan_names,
)

__all__ = [
    "ENV_BENCH_FILE",
    "ENV_CATALOG_URI",
    "ENV_TWIN_SEED",
    "EXISTING_PLANS_DEVICES_FILE",
    "FUNCTION_NAMES",
    "PERMISSIONS_FILE",
    "ManagerSettings",
    "ProfileSettings",
    "QueueServerError",
    "build_namespace",
    "manager_argv",
    "permissions",
    "plan_names",
    "prepare",
    "write_existing_plans_devices",
    "write_permissions",
]
