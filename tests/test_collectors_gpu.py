"""GPUs through NVML: the missing-driver path for real, the value path through a shim."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from collectors.gpu import GpuCollector, throttle_reasons
from collectors.model import CollectResult


def collect(collector: GpuCollector) -> CollectResult:
    return asyncio.run(collector.collect(1000.0))


def nvml_works() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except Exception:
        return False
    return True


def test_no_driver_is_a_status_said_every_time_never_an_exception() -> None:
    if nvml_works():
        pytest.skip("this machine has an NVIDIA driver; the missing-driver path cannot be seen")
    collector = GpuCollector()
    for _ in range(3):
        result = collect(collector)
        assert result.status == "error: no NVIDIA driver (NVML Shared Library Not Found)"
        assert result.samples == []


class NVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(
            {3: "Not Supported", 9: "Driver Not Loaded", 15: "GPU is lost"}.get(value, "Unknown")
        )
        self.value = value


@dataclass
class FakeDevice:
    values: dict[str, Any]
    mig: list[FakeDevice] = field(default_factory=list)


@dataclass
class Memory:
    total: int
    used: int
    free: int


@dataclass
class Utilization:
    gpu: int
    memory: int


@dataclass
class ProcessInfo:
    pid: int
    usedGpuMemory: int | None  # NVML's field name


class FakeNvml:
    """A pynvml-shaped shim, because no GPU exists on the machines these tests run on.

    Its numbers are shaped like an H100 SXM5 80GB under a saturating
    inference load: NVML reports 81559 MiB installed and a 700 W enforced
    limit for that part, and the SM clock sits below its 1980 MHz boost
    while the software power cap is the active throttle reason.
    """

    NVML_TEMPERATURE_GPU = 0
    NVML_CLOCK_SM = 1
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
    NVML_VOLATILE_ECC = 0
    NVML_DEVICE_MIG_ENABLE = 1

    def __init__(self, devices: list[FakeDevice], init_error: int | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.init_calls = 0

    def nvmlInit(self) -> None:
        self.init_calls += 1
        if self.init_error is not None:
            raise NVMLError(self.init_error)

    def nvmlShutdown(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeDevice:
        return self.devices[index]

    def _value(self, device: FakeDevice, name: str) -> Any:
        value = device.values.get(name)
        if value is None:
            raise NVMLError(3)
        if isinstance(value, NVMLError):
            raise value
        return value

    def nvmlDeviceGetMigMode(self, device: FakeDevice) -> tuple[int, int]:
        return (1, 1) if device.mig else (0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, device: FakeDevice) -> int:
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: FakeDevice, slot: int) -> FakeDevice:
        if slot >= len(device.mig):
            raise NVMLError(6)  # NOT_FOUND: an empty slot
        return device.mig[slot]

    def nvmlDeviceGetUtilizationRates(self, device: FakeDevice) -> Utilization:
        return Utilization(self._value(device, "utilization"), 0)

    def nvmlDeviceGetMemoryInfo(self, device: FakeDevice) -> Memory:
        total, used = self._value(device, "memory")
        return Memory(total, used, total - used)

    def nvmlDeviceGetTemperature(self, device: FakeDevice, sensor: int) -> int:
        assert sensor == self.NVML_TEMPERATURE_GPU
        return int(self._value(device, "temperature"))

    def nvmlDeviceGetPowerUsage(self, device: FakeDevice) -> int:
        return int(self._value(device, "power_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, device: FakeDevice) -> int:
        return int(self._value(device, "limit_mw"))

    def nvmlDeviceGetClockInfo(self, device: FakeDevice, clock: int) -> int:
        assert clock == self.NVML_CLOCK_SM
        return int(self._value(device, "sm_mhz"))

    def nvmlDeviceGetCurrentClocksEventReasons(self, device: FakeDevice) -> int:
        return int(self._value(device, "throttle"))

    def nvmlDeviceGetTotalEccErrors(self, device: FakeDevice, kind: int, counter: int) -> int:
        return int(self._value(device, "ecc"))

    def nvmlDeviceGetComputeRunningProcesses(self, device: FakeDevice) -> list[ProcessInfo]:
        return list(self._value(device, "processes"))


MIB = 1 << 20
H100 = {
    "utilization": 97,
    "memory": (81559 * MIB, 76214 * MIB),
    "temperature": 71,
    "power_mw": 688_412,
    "limit_mw": 700_000,
    "sm_mhz": 1755,
    "throttle": 0x4,  # SW power cap
    "ecc": 0,
    "processes": [ProcessInfo(4242, 75900 * MIB)],
}
# A MIG 3g.40gb instance: memory and processes, but no utilization query.
MIG_SLICE = {"memory": (40192 * MIB, 30011 * MIB), "processes": [ProcessInfo(5151, 29800 * MIB)]}


def series(
    result: CollectResult, name: str, **labels: str
) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        s.labels: s.value
        for s in result.samples
        if s.series == name and all(s.label(k) == v for k, v in labels.items())
    }


def test_values_of_an_h100_in_quell_words() -> None:
    result = collect(GpuCollector(nvml=FakeNvml([FakeDevice(H100)])))
    assert result.ok, result.status
    one = {s.series: s.value for s in result.samples if s.labels == (("gpu", "0"),)}
    assert one == {
        "gpu_utilization_percent": 97,
        "gpu_memory_used_bytes": 76214 * MIB,
        "gpu_memory_total_bytes": 81559 * MIB,
        "gpu_temperature_celsius": 71,
        "gpu_power_watts": pytest.approx(688.412),
        "gpu_power_limit_watts": 700,
        "gpu_sm_clock_mhz": 1755,
        "gpu_throttle_reasons": 4,
        "gpu_ecc_errors_total": 0,
    }
    flags = {s.label("reason"): s.value for s in result.samples if s.series == "gpu_throttle"}
    assert flags["sw_power_cap"] == 1
    assert sum(flags.values()) == 1
    assert series(result, "gpu_process_memory_bytes") == {
        (("gpu", "0"), ("pid", "4242")): 75900 * MIB
    }


def test_mig_instances_are_reported_under_their_gpu_and_unsupported_values_are_absent() -> None:
    mig_gpu = FakeDevice(H100, mig=[FakeDevice(MIG_SLICE), FakeDevice(MIG_SLICE)])
    nvml = FakeNvml([FakeDevice(H100), mig_gpu])
    result = collect(GpuCollector(nvml=nvml))
    assert result.ok, result.status
    used = series(result, "gpu_memory_used_bytes")
    assert used[(("gpu", "1"), ("mig", "0"))] == 30011 * MIB
    assert used[(("gpu", "1"), ("mig", "1"))] == 30011 * MIB
    assert set(series(result, "gpu_utilization_percent")) == {(("gpu", "0"),), (("gpu", "1"),)}
    assert (("gpu", "1"), ("mig", "0"), ("pid", "5151")) in series(
        result, "gpu_process_memory_bytes"
    )


def test_a_failed_init_is_said_once_and_not_retried_every_tick() -> None:
    nvml = FakeNvml([], init_error=9)
    collector = GpuCollector(nvml=nvml)
    statuses = {collect(collector).status for _ in range(3)}
    assert statuses == {"error: no NVIDIA driver (Driver Not Loaded)"}
    assert nvml.init_calls == 1


def test_a_lost_gpu_is_a_status_and_the_devices_are_looked_up_again() -> None:
    lost = dict(H100, utilization=NVMLError(15))
    nvml = FakeNvml([FakeDevice(H100), FakeDevice(lost)])
    collector = GpuCollector(nvml=nvml)
    result = collect(collector)
    assert result.status == "error: GPU 1: NVML: GPU is lost"
    assert series(result, "gpu_temperature_celsius") == {(("gpu", "0"),): 71}
    collect(collector)
    assert nvml.init_calls == 2


def test_throttle_reason_names() -> None:
    assert throttle_reasons(0) == []
    assert throttle_reasons(0x4 | 0x40) == ["sw_power_cap", "hw_thermal_slowdown"]
    assert throttle_reasons(0x1FF)[-1] == "display_clock_setting"
