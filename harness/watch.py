"""``gainloop watch`` and a twin campaign as real processes, for the watch's tests and its benchmark.

``start_campaign(...)``: ``gainloop campaign run --twin`` into a Tiled server, optionally stretched
by stalls between trials (``$GAINLOOP_FAULT_INJECT`` ``stall=S@proposed:K``: the plan sleeps after
trial K is proposed, costing no CPU) so that a page can follow it; ``first_campaign_uid(...)``
waits for its record run; ``start_watch(...)``: ``gainloop watch`` on a free port, its address
read from the line it prints. ``WatchProcess.stop()`` sends SIGTERM (and SIGKILL if need be).
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness.faults._env import clean_env

__all__ = ["WatchProcess", "first_campaign_uid", "start_campaign", "start_watch", "stop"]


def stop(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout_s``."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_campaign(
    catalog_url: str,
    api_key: str,
    workdir: Path,
    *,
    max_trials: int,
    seed: int = 0,
    stalls: dict[int, float] | None = None,
) -> subprocess.Popen:
    """``gainloop campaign run --twin`` into the Tiled server; ``stalls``: trial index -> seconds it waits,
    once proposed, before it is measured."""
    workdir.mkdir(parents=True, exist_ok=True)
    inject = ",".join(f"stall={s:g}@proposed:{k}" for k, s in sorted((stalls or {}).items()))
    env = clean_env(TILED_API_KEY=api_key, **({"GAINLOOP_FAULT_INJECT": inject} if inject else {}))
    args = [
        sys.executable, "-m", "gainloop.cli", "campaign", "run", "--twin", "--seed", str(seed),
        "--max-trials", str(max_trials), "--budget-hours", "100", "--catalog", catalog_url,
        "--data-dir", str(workdir / "data"), "--json",
    ]  # fmt: skip
    out = (workdir / "campaign.out").open("w")
    with out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)


def first_campaign_uid(
    catalog_url: str,
    api_key: str,
    proc: subprocess.Popen | None = None,
    timeout_s: float = 60.0,
    **start_equals,
) -> str:
    """The uid of the first campaign record run in the catalog (whose start document has ``start_equals``),
    once there (``TimeoutError`` if none comes)."""
    from tiled.client import from_uri
    from tiled.queries import Key

    client = from_uri(catalog_url, api_key=api_key)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = client.search(Key("start.plan_name") == "campaign")
            for key, value in start_equals.items():
                found = found.search(Key(f"start.{key}") == value)
            if len(found):
                return next(iter(found.values())).start["campaign_uid"]
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"the campaign exited ({proc.returncode}) before its record run was stored")
            time.sleep(0.2)
        raise TimeoutError(f"no campaign in {catalog_url} within {timeout_s:g} s")
    finally:
        client.context.close()


@dataclass
class WatchProcess:
    proc: subprocess.Popen
    url: str  # http://127.0.0.1:PORT/
    out_path: Path

    def output(self) -> str:
        return self.out_path.read_text() if self.out_path.exists() else ""

    def stop(self) -> None:
        stop(self.proc)


def start_watch(
    catalog_url: str | None,
    api_key: str | None,
    workdir: Path,
    *,
    campaign_uid: str | None = None,
    qserver_addr: str | None = None,
    extra_args: tuple[str, ...] = (),
    timeout_s: float = 60.0,
) -> WatchProcess:
    """``gainloop watch`` (the campaign, else ``--latest``) on a free port; returns once it listens."""
    workdir.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "gainloop.cli", "watch", campaign_uid or "--latest", "--port", "0"]
    if catalog_url is not None:
        args += ["--catalog", catalog_url]
    args += ["--data-dir", str(workdir / "data")]
    if qserver_addr is not None:
        args += ["--qserver", qserver_addr]
    args += list(extra_args)
    env = clean_env(**({"TILED_API_KEY": api_key} if api_key else {}))
    out_path = workdir / "watch.out"
    with out_path.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:\d+/", out_path.read_text())
        if found:
            return WatchProcess(proc, found.group(0), out_path)
        if proc.poll() is not None:
            raise RuntimeError(f"gainloop watch exited ({proc.returncode}): {out_path.read_text()[-2000:]}")
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError(f"gainloop watch did not listen within {timeout_s:g} s: {out_path.read_text()[-2000:]}")
