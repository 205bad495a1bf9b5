"""Shared pytest configuration: a ``--device`` option (as in SpeechBrain's tests)."""

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption(
        "--device", action="store", default="cpu", help="torch device for the tests (cpu, cuda)"
    )
    parser.addoption(
        "--device_tests_only",
        action="store_true",
        help="run only the tests that take the device fixture (what --device changes), e.g. "
        "benchmarks/run_gpu.sh's short GPU pass",
    )


def pytest_collection_modifyitems(config, items):
    """With ``--device_tests_only``, deselect the tests that do not use the ``device`` fixture."""
    if not config.getoption("--device_tests_only"):
        return
    keep = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    deselected = [item for item in items if "device" not in getattr(item, "fixturenames", ())]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = keep


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail("--device cuda was given but CUDA is not available")
    return torch.device(name)


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Every test starts seeded and single-threaded. Tiny test models are dominated by per-op
    overhead: one thread is faster on a 2-core box and does not fight other processes for the
    cores; recipes run by a test may change the thread count (``num_threads``), so it is reset
    before each test."""
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_esc50(tmp_path_factory) -> str:
    """Synthetic ESC-50-layout folder (5 classes x 2 clips x 5 folds, 1 s, 16 kHz, with stems).

    Read-only for tests: copy it under ``tmp_path`` before modifying anything in it.
    """
    from audio_interpretability.data.synthetic import generate_synthetic_esc50

    folder = str(tmp_path_factory.mktemp("tiny_esc50"))
    generate_synthetic_esc50(
        folder, n_classes=5, clips_per_class_per_fold=2, duration=1.0, sample_rate=16000, seed=0
    )
    return folder


@pytest.fixture(scope="session")
def tiny_wham(tmp_path_factory) -> str:
    """WHAM!-layout noise folder ``<tmp>/wham_noise/{tr,cv,tt}/*.wav`` (stereo 16 kHz,
    0.5-3 s files); returns the ``wham_noise`` folder. Read-only for tests."""
    from audio_interpretability.data.synthetic import generate_wham_noise

    folder = str(tmp_path_factory.mktemp("tiny_wham") / "wham_noise")
    generate_wham_noise(
        folder, n_files=(4, 2, 2), sample_rate=16000, min_duration=0.5, max_duration=3.0, seed=0
    )
    return folder
