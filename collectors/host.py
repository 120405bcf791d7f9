"""The machine under the queues: CPU, memory, disks, network, accept queues, processes.

CPU percentages come from cpu_times deltas between this collector's own
readings, not from psutil.cpu_percent(), whose module-wide "last call" is
shared with anything else in the process that calls it. The first reading
only primes the deltas, so CPU and rates appear from the second tick on.

Most of the work is /proc and sock_diag reads that answer in microseconds
and never wait on a process, so it runs in the loop: a thread hop each tick
cost more CPU than the reads (bench/collectors.py). A tick that looks
processes up by name reads every process's cmdline, which waits on that
process's memory map and can hang behind a stuck one, so that tick runs in
a thread.

On Linux the per-tick reads go to /proc directly (collectors.procfs); psutil
answers where /proc cannot.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from collectors import listen_queues
from collectors.model import OK, CollectResult, Labels, Sample, error
from collectors.procfs import (
    DiskTotals,
    ListenCounters,
    ProcFile,
    ProcfsProcess,
    PsutilProcess,
    read_cpu_times,
)
from collectors.rates import RateTracker

# Re-resolve watched process names this often: a restarted server gets a new pid.
NAME_RESCAN_S = 10.0


def _cpu_busy(times: Any) -> tuple[float, float, float]:
    """(busy, total, iowait) seconds; guest time is already inside user time on Linux."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    iowait = getattr(times, "iowait", 0.0)
    idle = times.idle + iowait
    return total - idle, total, iowait


def cpu_percent(previous: Any, current: Any) -> tuple[float, float] | None:
    """(busy %, iowait %) between two cpu_times readings; None if no time passed."""
    busy0, total0, iowait0 = _cpu_busy(previous)
    busy1, total1, iowait1 = _cpu_busy(current)
    elapsed = total1 - total0
    if elapsed <= 0:
        return None
    busy = min(100.0, max(0.0, 100.0 * (busy1 - busy0) / elapsed))
    return busy, min(100.0, max(0.0, 100.0 * (iowait1 - iowait0) / elapsed))


def read_memory(root: Path = Path("/proc")) -> tuple[float, float] | None:
    """Memory and swap in use, in percent, as psutil counts them, from one read.

    psutil's virtual_memory() and swap_memory() read /proc/meminfo twice and
    /proc/vmstat once more for swap-in figures quell does not use. None when
    the kernel does not say how much memory is available.
    """
    try:
        text = (root / "meminfo").read_text()
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        if name in _MEMINFO_FIELDS:
            number = rest.split()
            if number and number[0].isdigit():
                fields[name] = int(number[0])
    total, available = fields.get("MemTotal"), fields.get("MemAvailable")
    if not total or available is None:
        return None
    swap_total = fields.get("SwapTotal", 0)
    swap_used = swap_total - fields.get("SwapFree", swap_total)
    swap = 100.0 * swap_used / swap_total if swap_total else 0.0
    return round(100.0 * (total - available) / total, 1), round(swap, 1)


_MEMINFO_FIELDS = frozenset(("MemTotal", "MemAvailable", "SwapTotal", "SwapFree"))


def read_listen_counters(root: Path = Path("/proc")) -> dict[str, int]:
    """TcpExt ListenOverflows and ListenDrops from /proc/net/netstat."""
    return ListenCounters(root).read()


@dataclass(slots=True)
class _Watched:
    label: str
    process: ProcfsProcess | PsutilProcess
    cpu_seconds: float | None = None
    seen_at: float = 0.0


class HostCollector:
    def __init__(
        self,
        *,
        processes: Sequence[str | int] = (),
        listen_ports: Sequence[int] | None = None,
        proc_root: Path = Path("/proc"),
        name: str = "host",
    ) -> None:
        self.name = name
        self._wanted = list(processes)
        self._ports = None if listen_ports is None else set(listen_ports)
        self._proc = proc_root
        self._procfs = sys.platform.startswith("linux") and os.access(proc_root / "stat", os.R_OK)
        self._stat = ProcFile(f"{proc_root}/stat")
        self._disks = DiskTotals(proc_root) if self._procfs else None
        self._listen = ListenCounters(proc_root)
        self._rates = RateTracker()
        self._cpu_total: Any = None
        self._cpu_cores: list[Any] = []
        self._watched: dict[int, _Watched] = {}
        self._names_resolved_at = float("-inf")
        self._missing: list[str] = []
        self._netlink_ok = True

    async def collect(self, now: float) -> CollectResult:
        started = time.perf_counter()
        if self._rescan_due(now):
            samples, problems = await asyncio.to_thread(self._collect, now)
        else:
            samples, problems = self._collect(now)
        status = OK if not problems else error("; ".join(problems))
        return CollectResult(samples, [], status, time.perf_counter() - started)

    def _collect(self, now: float) -> tuple[list[Sample], list[str]]:
        samples: list[Sample] = []
        problems: list[str] = []

        def add(series: str, value: float, labels: Labels = ()) -> None:
            samples.append(Sample(series, labels, now, float(value)))

        def rate(series: str, value: float, labels: Labels = ()) -> None:
            per_second = self._rates.update((series, labels), value, now)
            if per_second is not None:
                add(series, per_second, labels)

        self._cpu(add)
        load1, _, _ = os.getloadavg()
        add("host_load1", load1)
        memory = read_memory(self._proc)
        if memory is None:
            memory = psutil.virtual_memory().percent, psutil.swap_memory().percent
        add("host_memory_percent", memory[0])
        add("host_swap_percent", memory[1])
        disks = self._disk_bytes()
        if disks is not None:
            rate("host_disk_read_bytes_rate", disks[0])
            rate("host_disk_write_bytes_rate", disks[1])
        net = psutil.net_io_counters()
        if net is not None:
            rate("host_net_recv_bytes_rate", net.bytes_recv)
            rate("host_net_sent_bytes_rate", net.bytes_sent)
            rate("host_net_drops_rate", net.dropin + net.dropout)
            rate("host_net_errors_rate", net.errin + net.errout)
        try:
            counters = self._listen.read()
        except OSError as problem:
            problems.append(f"cannot read /proc/net/netstat: {problem.strerror}")
            counters = {}
        for field, series in (
            ("ListenOverflows", "host_listen_overflows_total"),
            ("ListenDrops", "host_listen_drops_total"),
        ):
            if field in counters:
                add(series, counters[field])
                rate(series.removesuffix("_total") + "_rate", counters[field])
        self._listen_queues(add)
        self._processes(now, add, problems)
        return samples, problems

    def _cpu(self, add: Any) -> None:
        total: Any = None
        cores: list[Any] = []
        if self._procfs:
            try:
                total, cores = read_cpu_times(self._stat)
            except OSError:
                # /proc that cannot say the CPU times will not describe processes either.
                self._procfs = False
        if total is None:
            total = psutil.cpu_times()
            cores = psutil.cpu_times(percpu=True)
        if self._cpu_total is not None:
            overall = cpu_percent(self._cpu_total, total)
            if overall is not None:
                add("host_cpu_percent", overall[0])
                add("host_cpu_iowait_percent", overall[1])
            for index, (before, after) in enumerate(zip(self._cpu_cores, cores, strict=False)):
                core = cpu_percent(before, after)
                if core is not None:
                    add("host_cpu_core_percent", core[0], (("core", str(index)),))
        self._cpu_total, self._cpu_cores = total, cores

    def _disk_bytes(self) -> tuple[int, int] | None:
        if self._disks is not None:
            try:
                return self._disks.read()
            except OSError:
                # psutil's sums start from another base, so rates across the
                # switch would be nonsense: they start again next tick.
                self._disks = None
                self._rates = RateTracker()
        counters = psutil.disk_io_counters()
        return None if counters is None else (counters.read_bytes, counters.write_bytes)

    def _listen_queues(self, add: Any) -> None:
        queues: list[listen_queues.ListenQueue] = []
        if self._netlink_ok:
            try:
                queues = listen_queues.from_netlink()
            except OSError:
                # Some sandboxes refuse sock_diag; depths alone are still worth having.
                self._netlink_ok = False
        if not self._netlink_ok:
            queues = listen_queues.from_proc(self._proc)
        for port, q in sorted(listen_queues.by_port(queues).items()):
            if self._ports is not None and port not in self._ports:
                continue
            port_label: Labels = (("port", str(port)),)
            add("host_listen_queue_depth", q.depth, port_label)
            if q.capacity is not None:
                add("host_listen_queue_capacity", q.capacity, port_label)

    def _rescan_due(self, now: float) -> bool:
        """Whether this tick's ``_resolve`` walks every process looking for names."""
        if not any(isinstance(w, str) for w in self._wanted):
            return False
        stale = any(not w.process.is_running() for w in self._watched.values())
        return stale or now - self._names_resolved_at >= NAME_RESCAN_S

    def _resolve(self, now: float, problems: list[str]) -> None:
        names = {w for w in self._wanted if isinstance(w, str)}
        pids = {w for w in self._wanted if isinstance(w, int)}
        # Every process is asked, not just up to the first gone one: on /proc
        # the answer carries the reading _processes takes next.
        running = {pid: w.process.is_running() for pid, w in self._watched.items()}
        stale = not all(running.values())
        if not stale and now - self._names_resolved_at < NAME_RESCAN_S:
            problems.extend(self._missing)
            return
        self._names_resolved_at = now
        self._missing = []
        found: dict[int, str] = {}
        for pid in pids:
            if psutil.pid_exists(pid):
                found[pid] = str(pid)
            else:
                self._missing.append(f"watched process {pid} is not running")
        if names:
            for process in psutil.process_iter(["name", "cmdline"]):
                info = process.info
                argv = info.get("cmdline") or []
                candidates = {info.get("name") or ""} | {os.path.basename(a) for a in argv[:2]}
                for name in names & candidates:
                    found.setdefault(process.pid, name)
            for name in sorted(names - set(found.values())):
                self._missing.append(f"no process named {name!r}")
        problems.extend(self._missing)
        for pid in list(self._watched):
            if pid not in found:
                del self._watched[pid]
        for pid, label in found.items():
            # A pid found again whose first process is gone now belongs to
            # another process: watch that one from a fresh start, or the old
            # handle keeps every tick stale and rescanning.
            if pid not in self._watched or not running.get(pid, True):
                try:
                    self._watched[pid] = _Watched(label, self._open(pid))
                except psutil.Error:
                    self._watched.pop(pid, None)
                    continue

    def _open(self, pid: int) -> ProcfsProcess | PsutilProcess:
        if self._procfs:
            return ProcfsProcess(pid, self._proc)
        return PsutilProcess(pid)

    def _processes(self, now: float, add: Any, problems: list[str]) -> None:
        if not self._wanted:
            return
        self._resolve(now, problems)
        for pid, watched in list(self._watched.items()):
            labels: Labels = (("pid", str(pid)), ("process", watched.label))
            try:
                reading = watched.process.read()
            except psutil.NoSuchProcess:
                del self._watched[pid]
                problems.append(f"watched process {watched.label} ({pid}) exited")
                continue
            except psutil.AccessDenied:
                problems.append(f"not allowed to read process {watched.label} ({pid})")
                continue
            cpu_seconds = reading.cpu_seconds
            if watched.cpu_seconds is not None and now > watched.seen_at:
                busy = (cpu_seconds - watched.cpu_seconds) / (now - watched.seen_at)
                add("process_cpu_percent", max(0.0, 100.0 * busy), labels)
            watched.cpu_seconds, watched.seen_at = cpu_seconds, now
            add("process_rss_bytes", reading.rss_bytes, labels)
            add("process_threads", reading.threads, labels)
            add("process_open_files", reading.open_files, labels)
