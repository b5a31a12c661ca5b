"""Fixtures shared by every test."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: a second intra-op thread only adds synchronisation, and
    on a busy CI machine a spinning thread costs 10-100x. Restored after each test."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
