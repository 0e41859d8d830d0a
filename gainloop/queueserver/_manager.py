"""Starting bluesky-queueserver's RE Manager on gainloop's profile: its files and its command line.

``ManagerSettings`` says where the manager listens (0MQ control and info sockets on
127.0.0.1 unless an interface is named), which Redis it keeps its queue in (with a
name prefix of its own) and where its files live. ``prepare(settings, profile)``
writes the two files the manager needs next to each other:

* ``user_group_permissions.yaml``: the ``primary`` group may run gainloop's plans and
  ``bench_status`` only (no other plan or function that happens to be in the namespace);
* ``existing_plans_and_devices.yaml``: the plans and devices of the profile, as
  ``qserver-list-plans-devices`` would write them (rewritten by the manager from the
  real devices whenever the environment opens);

and ``manager_argv(settings)`` is the ``start-re-manager`` command on them.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gainloop.queueserver._profile import FUNCTION_NAMES, ProfileSettings, QueueServerError, plan_names

__all__ = [
    "EXISTING_PLANS_DEVICES_FILE",
    "PERMISSIONS_FILE",
    "ManagerSettings",
    "manager_argv",
    "permissions",
    "prepare",
    "write_existing_plans_devices",
    "write_permissions",
]

PERMISSIONS_FILE = "user_group_permissions.yaml"
EXISTING_PLANS_DEVICES_FILE = "existing_plans_and_devices.yaml"
STARTUP_MODULE = "gainloop.queueserver.startup"

_LAUNCH = "import sys; from bluesky_queueserver.manager.start_manager import start_manager; sys.exit(start_manager())"
_REDIS_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _port(value: int, what: str) -> int:
    if not (isinstance(value, int) and 1 <= value <= 65535):
        raise QueueServerError(f"{what} must be a port number 1..65535, got {value!r}")
    return value


@dataclass(frozen=True)
class ManagerSettings:
    """How the RE Manager is started (``host``: the interface its 0MQ sockets bind)."""

    state_dir: Path
    host: str = "127.0.0.1"
    control_port: int = 60615
    info_port: int = 60625
    redis_addr: str = "127.0.0.1:6379"
    redis_prefix: str = "gainloop"
    profile: ProfileSettings = field(default_factory=ProfileSettings)

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            raise QueueServerError(
                f"--host must be the IP address of an interface (127.0.0.1: this machine only), got {self.host!r}"
            ) from None
        _port(self.control_port, "the control port")
        _port(self.info_port, "the info port")
        if self.control_port == self.info_port:
            raise QueueServerError(f"the control and info ports must differ, both are {self.control_port}")
        if not _REDIS_PREFIX.match(self.redis_prefix):
            raise QueueServerError(
                f"the Redis name prefix must be 1..64 letters, digits or _ . : -, got {self.redis_prefix!r}"
            )
        if not self.redis_addr.strip():
            raise QueueServerError("the Redis address must be host[:port][/db], e.g. 127.0.0.1:6379")

    def _addr(self, port: int) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{port}"

    @property
    def control_addr(self) -> str:
        """The 0MQ control address clients connect to (``REManagerAPI(zmq_control_addr=...)``)."""
        return self._addr(self.control_port)

    @property
    def info_addr(self) -> str:
        """The 0MQ address the console output is published on (``zmq_info_addr``)."""
        return self._addr(self.info_port)

    @property
    def permissions_path(self) -> Path:
        return Path(self.state_dir) / PERMISSIONS_FILE

    @property
    def existing_plans_devices_path(self) -> Path:
        return Path(self.state_dir) / EXISTING_PLANS_DEVICES_FILE


def permissions() -> dict:
    """User group permissions: ``primary`` runs gainloop's plans and ``bench_status``, nothing else."""
    exact = [f":^{re.escape(name)}$" for name in plan_names()]
    return {
        "user_groups": {
            "root": {
                "allowed_plans": [None],
                "forbidden_plans": [":^_"],
                "allowed_devices": [None],
                "forbidden_devices": [":^_:?.*"],
                "allowed_functions": [None],
                "forbidden_functions": [":^_"],
            },
            "primary": {
                "allowed_plans": exact,
                "forbidden_plans": [None],
                "allowed_devices": [":?.*:depth=5"],
                "forbidden_devices": [None],
                "allowed_functions": [f":^{re.escape(name)}$" for name in FUNCTION_NAMES],
                "forbidden_functions": [":^_"],
            },
        }
    }


def write_permissions(path: Path) -> Path:
    """Write ``permissions()`` as the queueserver's YAML (validated by the queueserver first)."""
    import yaml
    from bluesky_queueserver.manager.profile_ops import validate_user_group_permissions

    content = permissions()
    validate_user_group_permissions(content)
    path = Path(path)
    path.write_text(
        "# written by gainloop (gainloop.queueserver.write_permissions); rewritten at every start\n"
        + yaml.safe_dump(content, sort_keys=False)
    )
    return path


def write_existing_plans_devices(path: Path, profile: ProfileSettings) -> Path:
    """Write the profile's plans and devices as ``qserver-list-plans-devices`` would.

    Built on the twin of the profile's bench file (the same device names), without
    connecting to a bench or opening the catalog; the manager rewrites the file from
    the worker's own namespace when the environment opens.
    """
    from bluesky_queueserver.manager.profile_ops import (
        existing_plans_and_devices_from_nspace,
        save_existing_plans_and_devices,
    )

    from gainloop.queueserver._profile import build_namespace

    namespace = build_namespace(profile, connect=False)
    plans, devices, _, _ = existing_plans_and_devices_from_nspace(nspace=namespace)
    missing = set(plan_names()) - set(plans)
    if missing:
        raise QueueServerError(f"the profile's plans {sorted(missing)} are not plans the queueserver accepts")
    path = Path(path)
    save_existing_plans_and_devices(
        existing_plans=plans, existing_devices=devices, file_dir=str(path.parent), file_name=path.name, overwrite=True
    )
    return path


def prepare(settings: ManagerSettings) -> ManagerSettings:
    """Create the state folder and write the manager's two files into it."""
    state = Path(settings.state_dir)
    try:
        state.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise QueueServerError(f"cannot create the queueserver folder {state}: {exc}") from None
    write_permissions(settings.permissions_path)
    write_existing_plans_devices(settings.existing_plans_devices_path, settings.profile)
    return settings


def manager_argv(settings: ManagerSettings) -> list[str]:
    """The ``start-re-manager`` command (as ``python -c``) on gainloop's startup module.

    Both 0MQ sockets bind ``settings.host``; the worker runs plain Python (no IPython
    kernel, which would open more ports); the console output is published on the info socket
    (``qserver-console-monitor``) as well as printed.
    """
    return [
        sys.executable,
        "-c",
        _LAUNCH,
        "--startup-module",
        STARTUP_MODULE,
        "--existing-plans-devices",
        str(settings.existing_plans_devices_path),
        "--update-existing-plans-devices",
        "ENVIRONMENT_OPEN",
        "--user-group-permissions",
        str(settings.permissions_path),
        "--user-group-permissions-reload",
        "ON_STARTUP",
        "--zmq-control-addr",
        settings.control_addr,
        "--zmq-info-addr",
        settings.info_addr,
        "--zmq-publish-console",
        "ON",
        "--use-ipython-kernel",
        "OFF",
        "--redis-addr",
        settings.redis_addr,
        "--redis-name-prefix",
        settings.redis_prefix,
    ]
