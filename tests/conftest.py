"""Shared fixtures: the real datasets in ../shared/data and small helpers."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCLABEL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Folder of real datasets; skips the test with a reason when it is absent."""
    if not (SHARED_DATA / "README.md").is_file():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (../shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _single_threaded() -> Iterator[None]:
    """One torch and one BLAS/OpenMP thread: spin-waiting threads are slow on busy 2-core machines."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
