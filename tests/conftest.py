"""Fixtures shared by every test folder."""

import os
import socket
from pathlib import Path

import pytest
import torch

# The real sample data (Fashionpedia API sample, Kaggle rows, label files, COCO evaluation
# fixtures) lives next to the repository, not in it.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_shared_data(*parts: str) -> Path:
    """``SHARED_DATA / parts``, or the end of the calling test when it does not exist: a skip
    on a developer machine, a failure under ``CI=true`` (where a missing data folder would
    otherwise silently drop the only coverage of the real-data paths)."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        message = f"real sample data not found at {path}"
        if _on_ci():
            pytest.fail(f"{message}; under CI=true missing shared data is a failure, not a skip "
                        "(put the data folder at ../shared/data next to the repository)",
                        pytrace=False)
        pytest.skip(message)
    return path


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "shared_data(*paths): the test reads these paths under ../shared/data; skipped when one "
        "is missing, failed instead under CI=true (tests/conftest.py)",
    )


def pytest_runtest_setup(item):
    for mark in item.iter_markers("shared_data"):
        for part in mark.args or ("",):
            require_shared_data(part)


@pytest.fixture
def shared_data():
    """:func:`require_shared_data` for tests that decide at run time which paths they need."""
    return require_shared_data


@pytest.fixture
def one_thread():
    """Run the test with one torch thread: the machine is shared, and one thread keeps the suite's
    footprint small and timings stable. Use with ``pytestmark = usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def free_port():
    """A function returning a TCP port that is free on 127.0.0.1 (for gloo rendezvous)."""
    return _free_tcp_port


@pytest.fixture(autouse=True)
def fp32_when_amp_is_auto(monkeypatch):
    """TEST.AMP_DTYPE "auto" (the default) resolves to fp32 in tests, so numeric checks give the
    same answer on CPUs with and without native bf16; tests/modeling/test_amp_auto.py tests
    "auto" itself and the bf16 path explicitly."""
    from effdetmask.modeling import inference

    monkeypatch.setattr(inference, "cpu_has_native_bf16", lambda: False)
