"""The allocator setting the package makes when imported: glibc keeps freed tensors for reuse
(``audio_interpretability.keep_freed_memory``), unless told not to."""

import os
import platform
import subprocess
import sys

import pytest

# In a fresh process: a 256 MiB tensor written, freed, and the resident memory before and after
PROBE = """
import os, sys
import audio_interpretability as ai
import torch
page = os.sysconf("SC_PAGE_SIZE")
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * page
import resource
x = torch.ones(64 * 2**20)  # 256 MiB
held = rss()
del x
after = rss()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
y = torch.ones(64 * 2**20)  # the next tensor of the same size
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(ai.MMAP_THRESHOLD_SET, held, after, faults)
"""


def _probe(**env):
    full = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    full.update(env)
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, env=full, timeout=120
    )
    return proc


needs_glibc = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc" or not os.path.exists("/proc/self/statm"),
    reason="the setting is glibc's (Linux); other C libraries are left alone",
)


@needs_glibc
def test_freed_tensor_stays_with_the_process_by_default():
    proc = _probe()
    assert proc.returncode == 0, proc.stderr[-2000:]
    threshold, held, after, faults = map(int, proc.stdout.split())
    assert threshold == 1 << 30
    assert after > held - 32 * 2**20  # the 256 MiB stay resident
    assert faults < 1000  # and the next tensor reuses them (65536 fresh 4 KiB pages otherwise)


@needs_glibc
def test_zero_leaves_glibc_default_and_memory_goes_back():
    proc = _probe(AUDIO_INTERPRETABILITY_MMAP_THRESHOLD="0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    threshold, held, after, faults = map(int, proc.stdout.split())
    assert threshold == 0
    assert after < held - 200 * 2**20  # returned to the system at once
    assert faults > 64  # the next tensor faults fresh pages in (128 even with 2 MiB pages)


@needs_glibc
def test_glibc_variable_wins():
    proc = _probe(MALLOC_MMAP_THRESHOLD_="131072")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == "0"


@pytest.mark.parametrize("value", ["lots", "-1", str(2**31)])
def test_bad_value_is_refused_at_import_with_the_fix(value):
    proc = _probe(AUDIO_INTERPRETABILITY_MMAP_THRESHOLD=value)
    assert proc.returncode != 0
    assert "AUDIO_INTERPRETABILITY_MMAP_THRESHOLD" in proc.stderr
    assert "give a number of bytes from 0" in proc.stderr
