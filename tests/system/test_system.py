"""Tests for lmwidget.system.resources: resource sampling, the GPU path through a faked NVML."""

from __future__ import annotations

import math
import sys
import types
import uuid
import warnings

import pytest
import torch

from lmwidget.system import resources as system

from tests.conftest import run_python

GPU_UUID = uuid.UUID("12345678-1234-5678-1234-567812345678")


class FakeNVML(types.ModuleType):
    """The parts of nvidia-ml-py's pynvml that lmwidget calls, counting the calls."""

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, power_error=False):
        super().__init__("pynvml")
        self.inits = 0
        self.lookups = 0
        self.power_error = power_error

    def nvmlInit(self):
        self.inits += 1

    def nvmlDeviceGetHandleByUUID(self, text):
        self.lookups += 1
        assert text == f"GPU-{GPU_UUID}"
        return "handle-0"

    def nvmlDeviceGetHandleByIndex(self, index):  # pragma: no cover - the UUID lookup succeeds
        raise AssertionError("looked up by index although the UUID was known")

    def nvmlDeviceGetName(self, handle):
        return b"Fake H100"

    def nvmlDeviceGetUtilizationRates(self, handle):
        return types.SimpleNamespace(gpu=87, memory=40)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=30 * system.MB * 1024, total=80 * system.MB * 1024)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        return 61

    def nvmlDeviceGetPowerUsage(self, handle):
        if self.power_error:
            raise RuntimeError("NVML_ERROR_NOT_SUPPORTED")
        return 312_500  # milliwatts


@pytest.fixture
def fake_gpu(monkeypatch):
    """A CUDA device 0 as torch reports it, with NVML faked; the NVML cache reset around it."""
    monkeypatch.setattr(system, "_nvml_state", {})
    monkeypatch.setattr(system, "_handles", {})
    props = types.SimpleNamespace(uuid=GPU_UUID, name="Fake H100")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda index: 512 * system.MB)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda index: 2048 * system.MB)

    def install(**kwargs):
        fake = FakeNVML(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", fake)
        return fake

    return install


def test_the_gpu_path_reads_nvml_and_torch(fake_gpu):
    fake_gpu()
    sampler = system.ResourceSampler(torch.device("cuda", 0))
    assert sampler.gpu_status == "GPU 0: Fake H100"
    s = sampler.sample()
    assert s["gpu_util"] == 87 and s["gpu_temp_c"] == 61 and s["gpu_power_w"] == 312.5
    assert s["gpu_mem_mb"] == 30 * 1024 and s["gpu_mem_total_mb"] == 80 * 1024
    assert s["torch_allocated_mb"] == 512 and s["torch_peak_mb"] == 2048
    assert s["rss_mb"] > 10 and s["system_mem_total_mb"] > s["system_mem_used_mb"] > 0


def test_nvml_is_initialised_once_and_handles_are_cached(fake_gpu):
    fake = fake_gpu()
    for _ in range(3):
        sampler = system.ResourceSampler(torch.device("cuda", 0))
        for _ in range(4):
            sampler.sample()
    assert fake.inits == 1 and fake.lookups == 1


def test_a_missing_sensor_is_nan_and_the_rest_still_read(fake_gpu):
    fake_gpu(power_error=True)
    s = system.ResourceSampler(torch.device("cuda", 0)).sample()
    assert math.isnan(s["gpu_power_w"]) and s["gpu_util"] == 87


def test_no_driver_is_said_once_on_the_panel_with_no_warning(fake_gpu, monkeypatch):
    fake = fake_gpu()

    class NVMLError_LibraryNotFound(Exception):
        pass

    def fail():
        fake.inits += 1
        raise NVMLError_LibraryNotFound("NVML Shared Library Not Found")

    fake.nvmlInit = fail
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        samplers = [system.ResourceSampler(torch.device("cuda", 0)) for _ in range(2)]
        s = samplers[0].sample()
    assert fake.inits == 1  # not retried at every sample
    assert samplers[1].gpu_status == "GPU 0: utilisation, temperature and power unavailable: no NVIDIA driver"
    assert math.isnan(s["gpu_util"]) and s["torch_allocated_mb"] == 512  # torch still knows


def test_on_the_cpu_nvml_is_never_touched_and_gpu_columns_are_nan(fake_gpu):
    fake = fake_gpu()
    sampler = system.ResourceSampler(torch.device("cpu"))
    s = sampler.sample()
    assert sampler.gpu_status == "no GPU: the model trains on cpu"
    assert fake.inits == 0
    assert all(math.isnan(s[k]) for k in ("gpu_util", "gpu_mem_mb", "gpu_temp_c", "gpu_power_w"))
    assert s["rss_mb"] > 10


def test_the_first_cpu_share_waits_for_a_real_interval():
    import time

    sampler = system.ResourceSampler(torch.device("cpu"))
    assert math.isnan(sampler.sample()["cpu_percent"])  # measured over ~0 s: no number
    time.sleep(system.MIN_CPU_INTERVAL + 0.05)
    sum(i * i for i in range(200_000))
    assert sampler.sample()["cpu_percent"] >= 0


@pytest.mark.slow
def test_a_cpu_run_with_its_dashboard_prints_and_warns_nothing():
    done = run_python(
        "import warnings, time\n"
        "import bqplot  # its own DeprecationWarning at import (bqscales, traitlets) is not ours\n"
        "warnings.simplefilter('error')\n"
        "import lmwidget\n"
        "run = lmwidget.train(display=False, max_steps=10**6, n_layer=1, n_embd=32, n_head=2,\n"
        "                     block_size=32, batch_size=8, eval_interval=100)\n"
        "d = run.dashboard\n"
        "time.sleep(2.5)\n"
        "run.stop()\n"
        "run.wait(60)\n"
        "time.sleep(0.5)\n"
        "assert d.resources.gpu_label.value == '<small>no GPU: the model trains on cpu</small>', d.resources.gpu_label.value\n"
        "assert 'error' not in d.notice.value, d.notice.value\n"
        "h = run.history\n"
        "assert h.rss_mb.notna().any() and h.gpu_util.isna().all()\n"
        "assert len(run.resources) >= 2\n")
    assert done.stdout == "" and done.stderr == ""


@pytest.mark.parametrize("files, expected", [
    ({}, 8),                                              # no cgroup files: the affinity
    ({"cpu.max": "max 100000\n"}, 8),                     # v2, no quota
    ({"cpu.max": "150000 100000\n"}, 2),                  # v2: 1.5 CPUs of quota -> 2 threads' worth
    ({"cpu.max": "1600000 100000\n"}, 8),                 # a quota above the affinity
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),  # v1
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, 8),      # v1, none
    ({"cpu.max": "garbage"}, 8),                          # unreadable: ignored
])
def test_usable_cpus_follow_a_containers_quota(tmp_path, monkeypatch, files, expected):
    """A Binder pod sees the host's CPUs but may use one or two: the quota caps the count."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(system, "CGROUP", tmp_path)
    monkeypatch.setattr(system.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert system.usable_cpus() == expected
