import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train faster on one thread, and a shared CI machine stays responsive."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
