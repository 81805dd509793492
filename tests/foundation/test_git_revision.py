"""Every record carries the git revision; ``+dirty`` marks uncommitted code, not results written under docs/."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pl_petune.records import git_revision


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_dirty_means_code_changed_not_docs(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "pkg" / "code.py").write_text("x = 1\n")
    (tmp_path / "docs" / "results.csv").write_text("a\n")
    git("add", ".")
    git("-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_revision(tmp_path / "pkg") == head
    (tmp_path / "docs" / "results.csv").write_text("a\nb\n")  # a store being filled under docs/
    assert git_revision(tmp_path / "pkg") == head
    (tmp_path / "pkg" / "code.py").write_text("x = 2\n")
    assert git_revision(tmp_path / "pkg") == head + "+dirty"
