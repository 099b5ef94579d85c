"""Model tests run tiny networks, all of them on one intra-op thread."""

import pytest


@pytest.fixture(autouse=True)
def _tiny_models_on_one_thread(single_thread: None) -> None:
    """Applies the shared ``single_thread`` fixture (tests/conftest.py) to every model test."""
