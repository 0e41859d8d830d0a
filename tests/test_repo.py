"""The README's commands and CI stay in step; lint and architecture contracts hold."""

from __future__ import annotations

import re
import shutil
import subprocess

from .conftest import REPO


def _readme_commands():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```bash\n(.+?)\n```", text, flags=re.S)


def test_readme_opens_with_the_main_job_and_the_test_command():
    cmds = _readme_commands()
    assert "pip install torch==2.13.0" in cmds[0] and "gainloop" in cmds[0].split("&&")[-1]
    assert "pip install torch==2.13.0" in cmds[1] and "pytest" in cmds[1]


def test_ci_runs_exactly_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1].strip() in [line.strip() for line in ci]


def test_import_contracts_hold():
    exe = shutil.which("lint-imports")
    assert exe is not None, "import-linter is part of the test extra"
    proc = subprocess.run([exe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:]
