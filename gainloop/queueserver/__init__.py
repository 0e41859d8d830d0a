"""gainloop's plans and devices behind bluesky-queueserver.

``gainloop qserver start`` (or ``prepare`` + ``manager_argv``) starts the RE Manager on
the startup module ``gainloop.queueserver.startup``: a RunEngine writing into the
catalog, the bench's devices (EPICS or the twin), every measurement plan of
``plans.registry`` and ``campaign_plan``, with their arguments described so that the
queueserver validates them when an item is submitted. The manager's 0MQ sockets bind
127.0.0.1 unless an interface is named; its queue lives in Redis under a name prefix.

Every run an item opens carries the item's uid in its start document (``ITEM_UID_KEY``), so
that ``reconcile`` (``gainloop qserver reconcile``) can tell, from the catalog's stop
documents, what became of an item whose outcome the queueserver lost (manager killed).
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
    ITEM_UID_KEY,
    ProfileSettings,
    QueueServerError,
    build_namespace,
    plan_names,
    running_item_uid,
)
from gainloop.queueserver._reconcile import OUTCOMES, ItemOutcome, QueueState, read_queue_state, reconcile, runs_of_item
from gainloop.queueserver._supervisor import stop_manager, supervise_manager

__all__ = [
    "ENV_BENCH_FILE",
    "ENV_CATALOG_URI",
    "ENV_TWIN_SEED",
    "EXISTING_PLANS_DEVICES_FILE",
    "FUNCTION_NAMES",
    "ITEM_UID_KEY",
    "OUTCOMES",
    "PERMISSIONS_FILE",
    "ItemOutcome",
    "ManagerSettings",
    "ProfileSettings",
    "QueueServerError",
    "QueueState",
    "build_namespace",
    "manager_argv",
    "permissions",
    "plan_names",
    "prepare",
    "read_queue_state",
    "reconcile",
    "running_item_uid",
    "runs_of_item",
    "stop_manager",
    "supervise_manager",
    "write_existing_plans_devices",
    "write_permissions",
]
