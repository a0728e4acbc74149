"""GPU memory per process from NVML (warren/worker/gpu_memory.py)."""

from __future__ import annotations

import os

import pytest

from warren.worker.gpu_memory import GpuMemory


def test_without_the_library_there_is_nothing_to_report() -> None:
    gpu = GpuMemory(library="libnvidia-ml-that-is-not-here.so.1")
    assert not gpu.available
    assert gpu.by_pid() == {}


@pytest.mark.skipif(not GpuMemory().available, reason="no NVIDIA driver (NVML) on this machine")
def test_with_nvml_every_figure_is_a_pid_and_a_byte_count() -> None:
    used = GpuMemory().by_pid()
    assert all(isinstance(pid, int) and pid > 0 and isinstance(n, int) and n >= 0 for pid, n in used.items())
    assert os.getpid() not in used  # this process has no CUDA context
