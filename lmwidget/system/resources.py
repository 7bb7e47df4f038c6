"""Resource sampling: the process's CPU and memory (psutil) and its GPU (NVML, torch)."""

from __future__ import annotations

import importlib
import math
import os
import threading
import time
from pathlib import Path

import psutil
import torch

MB = 1024 * 1024
MIN_CPU_INTERVAL = 0.1  # s: a CPU share measured over less is noise
SAMPLE_INTERVAL = 1.0   # s between resource samples (lmwidget.core.monitor): NVML and psutil never run more often
_nvml_lock = threading.Lock()
_nvml_state: dict = {}  # "module", or "error": NVML is initialised once per process
_handles: dict = {}     # torch device index -> NVML handle


CGROUP = Path("/sys/fs/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may use: its affinity, capped by a container's CPU quota
    (cgroup v2 cpu.max, or v1 cfs_quota_us). Binder and other Kubernetes pods see all the
    host's CPUs but may use only one or two."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for quota_file, period_file in ((CGROUP / "cpu.max", None),
                                    (CGROUP / "cpu" / "cpu.cfs_quota_us", CGROUP / "cpu" / "cpu.cfs_period_us")):
        try:
            if period_file is None:
                quota, period = quota_file.read_text().split()[:2]
            else:
                quota, period = quota_file.read_text().strip(), period_file.read_text().strip()
            if quota not in ("max", "-1") and int(period) > 0:
                return max(1, min(cpus, math.ceil(int(quota) / int(period))))
        except (OSError, ValueError):
            continue
    return max(1, cpus)


def nvml():
    """The initialised NVML module (nvidia-ml-py's `pynvml`), or None; tried once per process."""
    with _nvml_lock:
        if not _nvml_state:
            try:
                module = importlib.import_module("pynvml")
                module.nvmlInit()
                _nvml_state["module"] = module
            except Exception as e:  # no package, no driver, no GPU: said once, on the panel
                _nvml_state["error"] = _reason(e)
        return _nvml_state.get("module")


def nvml_error() -> str | None:
    return _nvml_state.get("error")


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, ImportError):
        return "nvidia-ml-py is not installed"
    if "LibraryNotFound" in type(error).__name__ or "not found" in text.lower():
        return "no NVIDIA driver"
    return f"NVML unavailable ({text})"


def _handle(module, index: int):
    """The NVML handle of torch's CUDA device `index` (by UUID, so CUDA_VISIBLE_DEVICES holds)."""
    with _nvml_lock:
        if index not in _handles:
            handle = None
            try:
                uuid = str(torch.cuda.get_device_properties(index).uuid)
                handle = module.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
            except Exception:
                pass
            if handle is None:
                handle = module.nvmlDeviceGetHandleByIndex(index)
            _handles[index] = handle
        return _handles[index]


class ResourceSampler:
    """Samples the resources of this process and of the GPU the model is on.

    Called by an observer (the dashboard's updater), never by the training loop. A value
    that cannot be measured is NaN; why the GPU is not shown is in `gpu_status`, once.
    """

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self._process = psutil.Process()
        self._process.cpu_percent(None)  # the first call only starts the interval
        self._since = time.monotonic()
        self.gpu_status = self._gpu_status()

    def _gpu_status(self) -> str:
        if self.device.type != "cuda":
            return f"no GPU: the model trains on {self.device.type}"
        module = nvml()
        index = self._index()
        if module is None:
            return f"GPU {index}: utilisation, temperature and power unavailable: {nvml_error()}"
        try:
            name = module.nvmlDeviceGetName(_handle(module, index))
        except Exception as e:
            return f"GPU {index}: {_reason(e)}"
        name = name.decode() if isinstance(name, bytes) else name
        return f"GPU {index}: {name}"

    def _index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def sample(self) -> dict:
        nan = float("nan")
        now = time.monotonic()
        cpu = self._process.cpu_percent(None)  # the CPU used since the previous call
        if now - self._since < MIN_CPU_INTERVAL:
            cpu = nan  # too short an interval to mean anything
        self._since = now
        out = {"cpu_percent": cpu, "rss_mb": self._process.memory_info().rss / MB}
        vm = psutil.virtual_memory()
        out["system_mem_used_mb"], out["system_mem_total_mb"] = (vm.total - vm.available) / MB, vm.total / MB
        gpu = dict.fromkeys(("gpu_util", "gpu_mem_mb", "gpu_mem_total_mb", "gpu_temp_c",
                             "gpu_power_w", "torch_allocated_mb", "torch_peak_mb"), nan)
        if self.device.type == "cuda":
            index = self._index()
            gpu["torch_allocated_mb"] = torch.cuda.memory_allocated(index) / MB
            gpu["torch_peak_mb"] = torch.cuda.max_memory_allocated(index) / MB
            module = nvml()
            if module is not None:
                gpu.update(_nvml_sample(module, _handle(module, index)))
        out.update(gpu)
        return out


def _nvml_sample(module, handle) -> dict:
    """Each NVML query on its own: a GPU without a power sensor still reports the rest."""
    out = {}
    queries = {
        "gpu_util": lambda: module.nvmlDeviceGetUtilizationRates(handle).gpu,
        "gpu_mem": lambda: module.nvmlDeviceGetMemoryInfo(handle),
        "gpu_temp_c": lambda: module.nvmlDeviceGetTemperature(handle, module.NVML_TEMPERATURE_GPU),
        "gpu_power_w": lambda: module.nvmlDeviceGetPowerUsage(handle) / 1000.0,  # mW
    }
    for name, query in queries.items():
        try:
            value = query()
        except Exception:
            continue
        if name == "gpu_mem":
            out["gpu_mem_mb"], out["gpu_mem_total_mb"] = value.used / MB, value.total / MB
        else:
            out[name] = float(value)
    return out
