"""Model tests run tiny networks: one intra-op thread is faster for them than several, and it
keeps the suite fast on a shared CPU, where extra OpenMP threads spin-wait on busy cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
