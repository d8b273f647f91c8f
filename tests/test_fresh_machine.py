"""`make test` on a machine with only Python and make: the tests that need a Debian package
(PostgreSQL for the team stack, Chromium for the MLflow UI, SLURM for the study executor) skip
there, each naming the package, and nothing fails. Tried for real: pytest runs in a mount
namespace whose /usr/lib/postgresql is empty and whose /usr/bin/chromium and /usr/sbin/slurmctld
are not files, as on a machine that never installed them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from conftest import CHROMIUM, ROOT

NEEDS_PACKAGES = ["tests/test_team_stack.py", "tests/test_team_faults.py", "tests/test_team_workers.py", "tests/test_team_shared_host.py",
                  "tests/test_mlflow_ui.py", "tests/test_study_slurm.py"]  # fmt: skip
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and util-linux's unshare to hide installed packages"
)


def test_tests_that_need_debian_packages_skip_naming_them_where_the_packages_are_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    hide = []
    if os.path.isdir("/usr/lib/postgresql"):
        hide.append(f"mount --bind {empty} /usr/lib/postgresql")
    if os.path.isfile(CHROMIUM):
        hide.append(f"mount --bind /dev/null {CHROMIUM}")  # a character device: not a file
    if os.path.isfile("/usr/sbin/slurmctld"):
        hide.append("mount --bind /dev/null /usr/sbin/slurmctld")
    pytest_run = f"exec {sys.executable} -m pytest -q -rs -p no:cacheprovider {' '.join(NEEDS_PACKAGES)}"
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join([*hide, pytest_run])],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "needs Debian's postgresql (apt-get install postgresql" in out, out[-3000:]
    assert "needs Debian's chromium (apt-get install chromium" in out, out[-3000:]
    assert "needs Debian's slurmctld slurmd slurm-client munge (apt-get install slurmctld slurmd slurm-client munge" in out, out[-3000:]
    summary = out.strip().splitlines()[-1]
    assert " skipped" in summary and "passed" not in summary and "error" not in summary and "failed" not in summary, summary
