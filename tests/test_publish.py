"""Publishing: the CI workflows run the README's commands, and `make publish` pushes the built book to gh-pages.

`make publish` is run for real (make, ghp-import, git) against a bare repository in a temporary folder, from a
temporary git work tree, so the repository's own branches are never touched.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOWS = REPO / ".github" / "workflows"
VENV = Path(sys.prefix)  # the environment running the tests holds ghp-import (requirements.txt)


def _workflow(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    assert isinstance(data, dict), f"{name} is not a YAML mapping"
    return data


def _triggers(data: dict) -> dict:
    """The `on:` section (YAML 1.1 reads the bare key `on` as True)."""
    on = data.get("on", data.get(True))
    return {on: None} if isinstance(on, str) else {k: None for k in on} if isinstance(on, list) else on


def _steps(data: dict) -> list[dict]:
    return [step for job in data["jobs"].values() for step in job["steps"]]


def _runs(data: dict) -> list[str]:
    return [step["run"].strip() for step in _steps(data) if "run" in step]


def _cached_paths(data: dict) -> set[str]:
    return {line.strip() for step in _steps(data) if str(step.get("uses", "")).startswith("actions/cache@")
            for line in str(step["with"]["path"]).splitlines() if line.strip()}


def test_readme_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make book" in readme and "make test" in readme


@pytest.mark.parametrize("name, command", [("test.yml", "make test"), ("book.yml", "make book")])
def test_workflow_runs_the_readme_command(name: str, command: str):
    data = _workflow(name)
    runs = _runs(data)
    assert runs.count(command) == 1, f"{name}: expected one step running exactly `{command}`, got {runs}"
    # Everything else is setup (and, for the book, publishing): no other build or test command.
    others = [r for r in runs if r != command]
    assert not [r for r in others if "pytest" in r or "jupyter-book" in r or "ada_utils" in r], others
    # apt-get download (no root) needs fresh package lists, before the command.
    assert "sudo apt-get update" in runs[:runs.index(command)]
    for job in data["jobs"].values():
        assert str(job["runs-on"]).startswith("ubuntu")
        assert str(job["env"]["HF_HUB_OFFLINE"]) == "1"
    pythons = [s["with"]["python-version"] for s in _steps(data) if str(s.get("uses", "")).startswith(
        "actions/setup-python@")]
    assert pythons == ["3.11"]
    venv_keys = [s["with"]["key"] for s in _steps(data) if s.get("with", {}).get("path") == ".venv"]
    assert len(venv_keys) == 1 and "hashFiles('requirements.txt', 'pyproject.toml')" in venv_keys[0]


def test_test_workflow_triggers_and_caches():
    data = _workflow("test.yml")
    assert set(_triggers(data)) == {"push", "pull_request"}
    assert _triggers(data)["push"] is None and _triggers(data)["pull_request"] is None  # every branch
    assert {".venv", "cache/photos"} <= _cached_paths(data)


def test_book_workflow_triggers_caches_and_publishes():
    data = _workflow("book.yml")
    triggers = _triggers(data)
    assert set(triggers) == {"push"} and triggers["push"]["branches"] == ["main"]
    assert {".venv", "cache/photos", "data", "cache/features"} <= _cached_paths(data)
    runs = _runs(data)
    assert runs.index("make publish") > runs.index("make book")
    assert data["permissions"]["contents"] == "write"  # ghp-import pushes the gh-pages branch


def _git(*args: str, cwd: Path | None = None, env: dict | None = None) -> str:
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def site(tmp_path: Path) -> dict:
    """A bare 'remote', a git work tree to publish from and a hermetic environment for git."""
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
           "GIT_COMMITTER_NAME": "ada tests", "GIT_COMMITTER_EMAIL": "tests@example.invalid"}
    for key in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "PUBLISH_REMOTE", "PUBLISH_BRANCH", "PUBLISH_DIR"):
        env.pop(key, None)
    bare, work = tmp_path / "remote.git", tmp_path / "work"
    _git("init", "-q", "--bare", str(bare), env=env)
    _git("init", "-q", str(work), env=env)
    return {"bare": bare, "work": work, "env": env}


def _publish(site: dict, *variables: str) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", "-C", str(site["work"]), "-f", str(REPO / "Makefile"), "publish",
           f"VENV={VENV}", f"PUBLISH_REMOTE={site['bare']}", *variables]
    return subprocess.run(cmd, env=site["env"], capture_output=True, text=True, timeout=120)


def test_make_publish_pushes_the_book_to_gh_pages(site: dict):
    html = site["work"] / "_build" / "html"
    (html / "_static").mkdir(parents=True)
    (html / "index.html").write_text("<html><body>the book</body></html>\n")
    (html / "_static" / "style.css").write_text("body {}\n")
    result = _publish(site)
    assert result.returncode == 0, result.stdout + result.stderr
    files = _git("--git-dir", str(site["bare"]), "ls-tree", "-r", "--name-only", "gh-pages", env=site["env"]).split()
    assert set(files) == {".nojekyll", "index.html", "_static/style.css"}
    assert "the book" in _git("--git-dir", str(site["bare"]), "show", "gh-pages:index.html", env=site["env"])

    # A rebuilt book replaces the published one (force push).
    (html / "index.html").write_text("<html><body>the book, rebuilt</body></html>\n")
    result = _publish(site)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rebuilt" in _git("--git-dir", str(site["bare"]), "show", "gh-pages:index.html", env=site["env"])


def test_make_publish_branch_and_folder_are_variables(site: dict):
    html = site["work"] / "site"
    html.mkdir()
    (html / "index.html").write_text("<html></html>\n")
    result = _publish(site, "PUBLISH_BRANCH=pages", "PUBLISH_DIR=site")
    assert result.returncode == 0, result.stdout + result.stderr
    branches = _git("--git-dir", str(site["bare"]), "branch", "--format=%(refname:short)", env=site["env"]).split()
    assert branches == ["pages"]


def test_make_publish_without_a_book_fails_clearly(site: dict):
    result = _publish(site)
    assert result.returncode != 0
    assert "_build/html/index.html does not exist: run make book first" in result.stderr
    assert "ghp-import" not in result.stdout  # nothing was attempted
    assert _git("--git-dir", str(site["bare"]), "branch", env=site["env"]).strip() == ""
