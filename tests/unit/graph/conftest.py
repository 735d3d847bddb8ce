"""Fixtures for the graph tests; the helpers live in graph_helpers.py."""

from __future__ import annotations

import pytest
from graph_helpers import linear, two_inputs

from worker.graph import InMemoryModels


@pytest.fixture
def models() -> InMemoryModels:
    return InMemoryModels({"lin": linear([1.0, 2.0]), "two": two_inputs()})
