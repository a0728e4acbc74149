"""GPU memory per process, from NVIDIA's management library (NVML), where there is one.

A worker that offloads layers to a GPU holds most of its model in GPU memory, which PSS does not see.
The local launcher (``warren/worker/local.py``) adds what NVML reports for the worker's pid to its
measured footprint, so the reservation that replaces the estimate counts the whole model. NVML is the driver's own library
(``libnvidia-ml.so.1``), loaded with ctypes: no package to install, nothing to do on machines without
an NVIDIA driver — there ``by_pid()`` is empty and footprints are PSS alone (the case on the machine
these figures were taken on, which has no GPU).

The calls, from NVML's API reference: ``nvmlInit_v2``, ``nvmlDeviceGetCount_v2``,
``nvmlDeviceGetHandleByIndex_v2`` and ``nvmlDeviceGetComputeRunningProcesses_v3`` (``_v2`` on older
drivers; both fill ``nvmlProcessInfo_t``: pid, used bytes, and two instance ids). A process whose usage
the driver does not disclose (``NVML_VALUE_NOT_AVAILABLE``) counts as 0.
"""

from __future__ import annotations

import ctypes
import logging
import threading

log = logging.getLogger(__name__)

NVML_SUCCESS = 0
NVML_ERROR_INSUFFICIENT_SIZE = 7
NVML_VALUE_NOT_AVAILABLE = 2**64 - 1
LIBRARY = "libnvidia-ml.so.1"


class ProcessInfo(ctypes.Structure):
    _fields_ = [("pid", ctypes.c_uint), ("usedGpuMemory", ctypes.c_ulonglong),
                ("gpuInstanceId", ctypes.c_uint), ("computeInstanceId", ctypes.c_uint)]


class GpuMemory:
    """``by_pid()``: bytes of GPU memory each process uses, summed over the GPUs. Thread-safe; the
    library is loaded and initialised on first use, once."""

    def __init__(self, library: str = LIBRARY) -> None:
        self.library = library
        self._nvml: ctypes.CDLL | None = None
        self._tried = False
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        with self._lock:
            return self._load() is not None

    def _load(self) -> ctypes.CDLL | None:
        if not self._tried:
            self._tried = True
            try:
                nvml = ctypes.CDLL(self.library)
                if nvml.nvmlInit_v2() == NVML_SUCCESS:
                    self._nvml = nvml
                    log.info("GPU memory per worker is measured with NVML")
            except (OSError, AttributeError):
                pass  # no NVIDIA driver here: footprints are PSS alone
        return self._nvml

    def by_pid(self) -> dict[int, int]:
        with self._lock:
            nvml = self._load()
            if nvml is None:
                return {}
            used: dict[int, int] = {}
            count = ctypes.c_uint(0)
            if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != NVML_SUCCESS:
                return {}
            for index in range(count.value):
                device = ctypes.c_void_p()
                if nvml.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(device)) != NVML_SUCCESS:
                    continue
                for info in self._processes(nvml, device):
                    if info.usedGpuMemory != NVML_VALUE_NOT_AVAILABLE:
                        used[info.pid] = used.get(info.pid, 0) + int(info.usedGpuMemory)
            return used

    @staticmethod
    def _processes(nvml: ctypes.CDLL, device: ctypes.c_void_p) -> list[ProcessInfo]:
        query = getattr(nvml, "nvmlDeviceGetComputeRunningProcesses_v3", None) or \
            getattr(nvml, "nvmlDeviceGetComputeRunningProcesses_v2", None)
        if query is None:
            return []
        size = 32
        for _ in range(4):  # the list can grow between the calls: ask again with the size NVML wants
            infos = (ProcessInfo * size)()
            count = ctypes.c_uint(size)
            rc = query(device, ctypes.byref(count), infos)
            if rc == NVML_SUCCESS:
                return list(infos[: count.value])
            if rc != NVML_ERROR_INSUFFICIENT_SIZE:
                return []
            size = max(count.value, size * 2)
        return []
