"""Shared fixtures: every test gets its own cache dir, so nothing leaks into ~/.cache."""

from __future__ import annotations

import pytest
import torch

_THREADS = torch.get_num_threads()


@pytest.fixture(autouse=True)
def _isolated_cache(request, tmp_path_factory, monkeypatch):
    # Slow tests use the real cache: they need the converted SmolLM2 (converting again costs a minute).
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("TUNEGUARD_CACHE", str(tmp_path_factory.mktemp("cache")))
        # Tiny models gain nothing from threads, and on a busy 2-core machine extra threads slow them several-fold.
        torch.set_num_threads(1)
    else:
        torch.set_num_threads(_THREADS)


@pytest.fixture(scope="session")
def shared_data():
    """Path to ../shared/data (real corpora), skipping when it is absent."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "shared" / "data"
    if not root.is_dir():
        pytest.skip("../shared/data is not beside the project")
    return root
