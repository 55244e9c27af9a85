"""Test-session setup: offline hubs, a private work folder (runs, caches, data) and the tiny benchmark.

Every test writes generated data, feature caches and runs under a temporary ``ADA_WORK`` folder, so running the
tests never touches the book's own ``runs/`` and ``data/``. The tiny benchmark is built once per session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO.parent / "shared" / "fixtures" / "abc"

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("ADA_CACHE", None)  # a user's shared cache stays out of the tests' private folder


@pytest.fixture(scope="session", autouse=True)
def ada_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``ADA_WORK`` folder for the whole session (inherited by papermill kernels and the CLI)."""
    work = tmp_path_factory.mktemp("ada_work")
    os.environ["ADA_WORK"] = str(work)
    return work


@pytest.fixture(scope="session")
def tiny_root(ada_work: Path) -> Path:
    """The tiny embedded benchmark, built once per session (seconds)."""
    from ada_utils.data import ensure_benchmark

    return ensure_benchmark(scale="tiny", seed=0)


@pytest.fixture(scope="session")
def abc_fixtures() -> Path:
    """The real-format AbC JSON excerpts shipped beside the repository (``../shared/fixtures/abc``)."""
    if not FIXTURES.is_dir():
        pytest.skip(f"AbC fixtures not found at ../shared/fixtures/abc (relative to the repository)")
    return FIXTURES
