"""Shared pytest configuration: a ``--device`` option (as in SpeechBrain's tests)."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--device", action="store", default="cpu", help="torch device for the tests (cpu, cuda)"
    )


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("--device cuda was given but CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
