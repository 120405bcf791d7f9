"""GPUs through NVML (the nvidia-ml-py package, imported as ``pynvml``).

A machine without the NVIDIA driver is normal (a CPU-only gateway host), so
a failed nvmlInit is a status, said once and kept, never an exception and
never retried on every tick. A value a device does not support (utilization
of a MIG instance, ECC on a consumer card) is simply absent, the way nvitop
answers NA: one unsupported query must not hide the others.

Device handles are looked up once. MIG instances of a GPU in MIG mode are
reported with a ``mig`` label next to their parent's ``gpu`` label.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from collections.abc import Callable
from typing import Any

from collectors.model import OK, CollectResult, Labels, Sample, error

# nvml.h clocks-event (throttle) reason bits.
THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x1, "gpu_idle"),
    (0x2, "applications_clocks_setting"),
    (0x4, "sw_power_cap"),
    (0x8, "hw_slowdown"),
    (0x10, "sync_boost"),
    (0x20, "sw_thermal_slowdown"),
    (0x40, "hw_thermal_slowdown"),
    (0x80, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
)
# nvml.h return codes that mean "no driver here" rather than "driver trouble".
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15


def throttle_reasons(mask: int) -> list[str]:
    return [name for bit, name in THROTTLE_REASONS if mask & bit]


def _describe(problem: BaseException) -> str:
    code = getattr(problem, "value", None)
    text = str(problem) or type(problem).__name__
    if code in (NVML_ERROR_DRIVER_NOT_LOADED, NVML_ERROR_LIBRARY_NOT_FOUND):
        return f"no NVIDIA driver ({text})"
    return f"NVML: {text}"


class GpuCollector:
    def __init__(self, *, nvml: Any = None, name: str = "gpu") -> None:
        """``nvml``: a pynvml-shaped module; by default pynvml is imported on first use."""
        self.name = name
        self._nvml = nvml
        self._failure: str | None = None
        self._devices: list[tuple[Labels, Any]] | None = None

    async def collect(self, now: float) -> CollectResult:
        if self._failure is not None:
            # Known for good (no driver, no library): no thread hop each tick
            # to say so again.
            return CollectResult([], [], error(self._failure), 0.0)
        started = time.perf_counter()
        samples, status = await asyncio.to_thread(self._collect, now)
        return CollectResult(samples, [], status, time.perf_counter() - started)

    def _start(self) -> Any:
        if self._nvml is None:
            try:
                self._nvml = importlib.import_module("pynvml")
            except ImportError:
                self._failure = "no NVIDIA driver (the nvidia-ml-py package is not installed)"
                return None
        try:
            self._nvml.nvmlInit()
        except Exception as problem:
            self._failure = _describe(problem)
            return None
        return self._nvml

    def _query(self, call: str, *args: Any) -> Any:
        """The NVML answer, or None when this device does not answer that question."""
        function: Callable[..., Any] | None = getattr(self._nvml, call, None)
        if function is None:
            return None
        try:
            return function(*args)
        except Exception as problem:
            if getattr(problem, "value", None) == NVML_ERROR_GPU_IS_LOST:
                raise
            return None

    def _find_devices(self, nvml: Any) -> list[tuple[Labels, Any]]:
        devices: list[tuple[Labels, Any]] = []
        mig_enabled = getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1)
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu: Labels = (("gpu", str(index)),)
            devices.append((gpu, handle))
            mode = self._query("nvmlDeviceGetMigMode", handle)
            if not mode or mode[0] != mig_enabled:
                continue
            for slot in range(self._query("nvmlDeviceGetMaxMigDeviceCount", handle) or 0):
                mig = self._query("nvmlDeviceGetMigDeviceHandleByIndex", handle, slot)
                if mig is not None:
                    devices.append(((("gpu", str(index)), ("mig", str(slot))), mig))
        return devices

    def _collect(self, now: float) -> tuple[list[Sample], str]:
        if self._failure is not None:
            return [], error(self._failure)
        if self._devices is None:
            nvml = self._start()
            if nvml is None:
                return [], error(self._failure or "NVML unavailable")
            try:
                self._devices = self._find_devices(nvml)
            except Exception as problem:
                return [], error(_describe(problem))
        samples: list[Sample] = []
        lost: list[str] = []
        for labels, handle in self._devices:
            try:
                self._device(now, labels, handle, samples)
            except Exception as problem:
                lost.append(f"GPU {dict(labels)['gpu']}: {_describe(problem)}")
        if lost:
            # A lost GPU needs a reset; look the devices up again next time.
            self._devices = None
            return samples, error("; ".join(lost))
        return samples, OK

    def _device(self, now: float, labels: Labels, handle: Any, samples: list[Sample]) -> None:
        nvml = self._nvml

        def add(series: str, value: Any, extra: Labels = ()) -> None:
            if value is not None:
                samples.append(Sample(series, tuple(sorted(labels + extra)), now, float(value)))

        rates = self._query("nvmlDeviceGetUtilizationRates", handle)
        add("gpu_utilization_percent", getattr(rates, "gpu", None))
        memory = self._query("nvmlDeviceGetMemoryInfo", handle)
        add("gpu_memory_used_bytes", getattr(memory, "used", None))
        add("gpu_memory_total_bytes", getattr(memory, "total", None))
        temperature = self._query(
            "nvmlDeviceGetTemperature", handle, getattr(nvml, "NVML_TEMPERATURE_GPU", 0)
        )
        add("gpu_temperature_celsius", temperature)
        power_mw = self._query("nvmlDeviceGetPowerUsage", handle)
        add("gpu_power_watts", None if power_mw is None else power_mw / 1000.0)
        limit_mw = self._query("nvmlDeviceGetEnforcedPowerLimit", handle)
        add("gpu_power_limit_watts", None if limit_mw is None else limit_mw / 1000.0)
        add(
            "gpu_sm_clock_mhz",
            self._query("nvmlDeviceGetClockInfo", handle, getattr(nvml, "NVML_CLOCK_SM", 1)),
        )
        mask = self._query("nvmlDeviceGetCurrentClocksEventReasons", handle)
        if mask is None:
            mask = self._query("nvmlDeviceGetCurrentClocksThrottleReasons", handle)
        if mask is not None:
            add("gpu_throttle_reasons", int(mask))
            for bit, reason in THROTTLE_REASONS:
                add("gpu_throttle", 1.0 if int(mask) & bit else 0.0, (("reason", reason),))
        ecc = self._query(
            "nvmlDeviceGetTotalEccErrors",
            handle,
            getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(nvml, "NVML_VOLATILE_ECC", 0),
        )
        add("gpu_ecc_errors_total", ecc)
        for process in self._query("nvmlDeviceGetComputeRunningProcesses", handle) or []:
            used = getattr(process, "usedGpuMemory", None)
            pid = getattr(process, "pid", None)
            if pid is not None:
                add("gpu_process_memory_bytes", used, (("pid", str(pid)),))

    def close(self) -> None:
        if self._devices is not None and self._nvml is not None:
            self._query("nvmlShutdown")
            self._devices = None
