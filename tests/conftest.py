"""Fixtures shared by several test files."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory):
    """Runs record the best matmul speed they measure; tests keep theirs out of the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LLMLAB_CACHE_DIR", str(tmp_path_factory.mktemp("llmlab-cache")))
        yield


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread; on a busy machine extra threads mostly wait for each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_progress(monkeypatch):
    """Progress bars off: tests read the output, not a terminal."""
    monkeypatch.setenv("LLMLAB_PROGRESS", "0")
