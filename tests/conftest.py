"""Fixtures shared by every test folder."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: the machine is shared, and one thread keeps the suite's
    footprint small and timings stable. Use with ``pytestmark = usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
