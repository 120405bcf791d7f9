"""The host collector on this very machine."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from collectors import listen_queues
from collectors.host import HostCollector, cpu_percent, read_listen_counters, read_memory
from collectors.model import CollectResult
from collectors.procfs import (
    CLOCK_TICKS,
    PAGE_SIZE,
    DiskTotals,
    ListenCounters,
    ProcessReading,
    ProcFile,
    ProcfsProcess,
    PsutilProcess,
    read_cpu_times,
)
from collectors.rates import RateTracker


def twice(collector: HostCollector) -> CollectResult:
    async def run() -> CollectResult:
        await collector.collect(time.time())
        await asyncio.sleep(0.2)
        return await collector.collect(time.time())

    return asyncio.run(run())


def values(result: CollectResult, series: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {s.labels: s.value for s in result.samples if s.series == series}


def test_host_values_are_sane_and_the_watched_process_is_this_one() -> None:
    me = os.getpid()
    result = twice(HostCollector(processes=[me]))
    assert result.ok, result.status
    one = {s.series: s.value for s in result.samples if not s.labels}
    assert 0 <= one["host_cpu_percent"] <= 100
    cores = values(result, "host_cpu_core_percent")
    assert len(cores) == psutil.cpu_count()
    assert all(0 <= v <= 100 for v in cores.values())
    assert 0 < one["host_memory_percent"] <= 100
    assert 0 <= one["host_swap_percent"] <= 100
    assert one["host_load1"] >= 0
    assert one["host_listen_overflows_total"] >= 0
    assert one["host_listen_overflows_rate"] >= 0
    # The kernel counts every overflow as a drop too.
    assert one["host_listen_drops_total"] >= one["host_listen_overflows_total"]
    for rate in ("host_net_recv_bytes_rate", "host_net_sent_bytes_rate"):
        assert one[rate] >= 0
    labels = (("pid", str(me)), ("process", str(me)))
    assert values(result, "process_rss_bytes")[labels] > 1 << 20
    assert values(result, "process_threads")[labels] >= 1
    assert values(result, "process_open_files")[labels] >= 3
    process_cpu = values(result, "process_cpu_percent")[labels]
    assert 0 <= process_cpu <= 100 * (psutil.cpu_count() or 1) + 5


def test_watched_by_name() -> None:
    name = psutil.Process().name()
    result = twice(HostCollector(processes=[name]))
    assert os.getpid() in {
        int(s.label("pid")) for s in result.samples if s.series == "process_rss_bytes"
    }
    assert {s.label("process") for s in result.samples if s.series == "process_rss_bytes"} == {name}


def test_a_missing_watched_process_is_a_status_and_the_rest_still_comes() -> None:
    result = twice(HostCollector(processes=["no-such-process-anywhere"]))
    assert result.status == "error: no process named 'no-such-process-anywhere'"
    assert any(s.series == "host_cpu_percent" for s in result.samples)


def test_accept_queue_depth_and_backlog_of_a_listening_socket() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(7)
        port = server.getsockname()[1]
        # Connected by the kernel, never accepted: they wait in the accept queue.
        clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            result = asyncio.run(HostCollector(listen_ports=[port]).collect(time.time()))
        finally:
            for client in clients:
                client.close()
    label = (("port", str(port)),)
    assert values(result, "host_listen_queue_depth") == {label: 3}
    capacity = values(result, "host_listen_queue_capacity")
    if capacity:  # sock_diag netlink may be refused in a sandbox
        assert capacity == {label: 7}


def test_proc_fallback_knows_depth_but_not_the_bound() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        try:
            found = listen_queues.by_port(listen_queues.from_proc())[port]
        finally:
            client.close()
    assert (found.depth, found.capacity) == (1, None)


def test_listen_overflow_counters_are_read_from_netstat(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "netstat").write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops TCPBacklogDrop\n"
        "TcpExt: 0 1742 1751 3\n"
        "IpExt: InNoRoutes InTruncatedPkts\n"
        "IpExt: 0 0\n"
    )
    assert read_listen_counters(tmp_path) == {"ListenOverflows": 1742, "ListenDrops": 1751}
    assert set(read_listen_counters()) == {"ListenOverflows", "ListenDrops"}


CpuTimes = namedtuple("CpuTimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def test_cpu_percent_from_times() -> None:
    before = CpuTimes(100, 0, 50, 800, 50, 0, 0, 0, 0, 0)
    after = before._replace(user=130, system=60, idle=850, iowait=60)
    busy, iowait = cpu_percent(before, after) or (None, None)
    assert busy == pytest.approx(40.0)
    assert iowait == pytest.approx(10.0)
    assert cpu_percent(before, before) is None


def test_memory_and_swap_from_one_meminfo_read(tmp_path: Path) -> None:
    (tmp_path / "meminfo").write_text(
        "MemTotal:       16000000 kB\nMemFree:         1000000 kB\n"
        "MemAvailable:    4000000 kB\nBuffers:          100000 kB\n"
        "SwapTotal:       2000000 kB\nSwapFree:        1500000 kB\n"
    )
    assert read_memory(tmp_path) == (75.0, 25.0)
    (tmp_path / "meminfo").write_text("MemTotal: 16000000 kB\nMemFree: 1000000 kB\n")
    assert read_memory(tmp_path) is None  # no MemAvailable: psutil's own guess is used
    assert read_memory(tmp_path / "absent") is None


def test_memory_reads_as_psutil_reads_it() -> None:
    mine = read_memory()
    assert mine is not None
    assert abs(mine[0] - psutil.virtual_memory().percent) < 2.0
    assert abs(mine[1] - psutil.swap_memory().percent) < 2.0


# The /proc fast path against psutil, on real processes and this machine's /proc.

CHILD = """
import sys, threading, time
for _ in range(3):
    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
resident = bytearray(b"x") * (24 << 20)
files = [open(sys.executable, "rb") for _ in range(5)]
deadline = time.process_time() + 0.3
while time.process_time() < deadline:
    pass
print("ready", flush=True)
time.sleep(600)
"""


@pytest.fixture
def child() -> Iterator[subprocess.Popen[str]]:
    """A sleeping process with threads, resident memory, open files and some CPU spent."""
    process = subprocess.Popen([sys.executable, "-c", CHILD], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "ready\n"
        yield process
    finally:
        process.kill()
        process.wait()


def psutil_reading(pid: int) -> ProcessReading:
    return PsutilProcess(pid).read()


def test_a_sleeping_child_reads_the_same_from_proc_as_through_psutil(
    child: subprocess.Popen[str],
) -> None:
    fast = ProcfsProcess(child.pid).read()
    assert fast == psutil_reading(child.pid)
    assert fast.cpu_seconds >= 0.2
    assert fast.rss_bytes > 24 << 20
    assert fast.threads == 4
    assert fast.open_files >= 3 + 5


def test_this_busy_process_reads_as_through_psutil() -> None:
    me = os.getpid()
    process = ProcfsProcess(me)
    process.read()  # opens the files it holds, which count among this process's own
    before = psutil_reading(me)
    assert process.is_running()
    fast = process.read()
    after = psutil_reading(me)
    # CPU time runs on between the three reads; the rest holds still.
    assert before.cpu_seconds <= fast.cpu_seconds <= after.cpu_seconds
    assert fast.threads == before.threads == after.threads
    assert fast.open_files == before.open_files == after.open_files
    assert abs(fast.rss_bytes - before.rss_bytes) < 1 << 20
    # The stat is read afresh every tick, not kept from the first one.
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    assert process.is_running()
    assert process.read().cpu_seconds >= fast.cpu_seconds + 0.04


def fake_proc_root(root: Path) -> Path:
    """This machine's system-wide /proc files, with room for made-up processes."""
    (root / "net").mkdir(parents=True)
    for name in ("stat", "meminfo", "diskstats", "net/netstat", "net/tcp", "net/tcp6"):
        (root / name).write_bytes(Path("/proc", name).read_bytes())
    return root


def psutil_proc_root(root: Path) -> Path:
    """The same files but /proc/stat: the collector then reads through psutil, as off Linux."""
    fake_proc_root(root)
    (root / "stat").unlink()
    return root


def series_of(result: CollectResult) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(s.series, s.labels) for s in result.samples if "listen_queue" not in s.series}


def test_the_collector_reports_a_child_alike_from_proc_and_through_psutil(
    child: subprocess.Popen[str], tmp_path: Path
) -> None:
    fast = twice(HostCollector(processes=[child.pid]))
    slow = twice(HostCollector(processes=[child.pid], proc_root=psutil_proc_root(tmp_path)))
    labels = (("pid", str(child.pid)), ("process", str(child.pid)))
    for series in ("process_rss_bytes", "process_threads", "process_open_files"):
        assert values(fast, series)[labels] == values(slow, series)[labels], series
    assert values(fast, "process_cpu_percent")[labels] == 0.0
    assert values(slow, "process_cpu_percent")[labels] == 0.0
    # Listening sockets come and go on a shared machine; the rest must match.
    assert series_of(fast) == series_of(slow)
    assert fast.ok and slow.ok, (fast.status, slow.status)


def test_an_exited_process_is_reported_alike_from_proc_and_through_psutil(
    tmp_path: Path,
) -> None:
    for proc_root in (Path("/proc"), psutil_proc_root(tmp_path)):
        process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        collector = HostCollector(processes=[process.pid], proc_root=proc_root)
        first = asyncio.run(collector.collect(time.time()))
        assert values(first, "process_threads") == {
            (("pid", str(process.pid)), ("process", str(process.pid))): 1.0
        }
        process.kill()
        process.wait()
        result = asyncio.run(collector.collect(time.time() + 1))
        assert result.status == f"error: watched process {process.pid} is not running"
        assert not [s for s in result.samples if s.series.startswith("process_")]


def test_a_process_that_exits_between_check_and_read_is_gone_not_an_error() -> None:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    fast, slow = ProcfsProcess(process.pid), PsutilProcess(process.pid)
    process.kill()
    process.wait()
    for watched in (fast, slow):
        assert not watched.is_running()
        with pytest.raises(psutil.NoSuchProcess):
            watched.read()


def fake_process(root: Path, pid: int, start: int, rss_pages: int, threads: int) -> None:
    """/proc/<pid>/stat and statm in the kernel's layout, with a name that has ') ' in it."""
    fields = ["S", "1", "1", "1", "0", "-1", "0", "0", "0", "0", "0", "250", "50", "0", "0"]
    fields += ["20", "0", str(threads), "0", str(start), "1000000", "1"]
    fields += ["0"] * 30
    (root / str(pid)).mkdir(exist_ok=True)
    (root / str(pid) / "stat").write_text(f"{pid} (odd) name) {' '.join(fields)}\n")
    (root / str(pid) / "statm").write_text(f"2000 {rss_pages} 5 1 0 100 0\n")
    (root / str(pid) / "fd").mkdir(exist_ok=True)


def test_a_reused_pid_is_told_by_its_start_time(tmp_path: Path) -> None:
    fake_process(tmp_path, 4242, start=1000, rss_pages=10, threads=2)
    process = ProcfsProcess(4242, tmp_path)
    assert process.is_running()
    cpu_seconds = 250 / CLOCK_TICKS + 50 / CLOCK_TICKS
    assert process.read() == ProcessReading(cpu_seconds, 10 * PAGE_SIZE, 2, 0)
    fake_process(tmp_path, 4242, start=2000, rss_pages=10, threads=2)
    assert not process.is_running()
    with pytest.raises(psutil.NoSuchProcess):
        process.read()


def test_the_collector_watches_the_new_process_behind_a_reused_pid(tmp_path: Path) -> None:
    root = fake_proc_root(tmp_path)
    # The pid must exist for the rescan to find it again; what /proc says of it is made up.
    pid = os.getpid()
    fake_process(root, pid, start=1000, rss_pages=10, threads=2)
    collector = HostCollector(processes=[pid], proc_root=root)
    labels = (("pid", str(pid)), ("process", str(pid)))

    def tick(now: float) -> CollectResult:
        return asyncio.run(collector.collect(now))

    tick(100.0)
    assert values(tick(101.0), "process_cpu_percent") == {labels: 0.0}
    fake_process(root, pid, start=2000, rss_pages=30, threads=5)
    replaced = tick(102.0)
    assert replaced.ok, replaced.status
    assert values(replaced, "process_rss_bytes") == {labels: 30 * PAGE_SIZE}
    assert values(replaced, "process_threads") == {labels: 5}
    # The new process's CPU time is not a delta from the old one's.
    assert values(replaced, "process_cpu_percent") == {}
    assert values(tick(103.0), "process_cpu_percent") == {labels: 0.0}


def test_a_process_proc_will_not_describe_is_not_allowed_alike_both_ways() -> None:
    script = (
        "import os, sys, psutil\n"
        "from collectors.procfs import ProcfsProcess, PsutilProcess\n"
        "if os.geteuid() == 0:\n"
        "    try:\n"
        "        os.setgid(65534); os.setuid(65534)\n"
        "    except OSError:\n"
        "        print('cannot drop privileges'); sys.exit(0)\n"
        "for kind in (ProcfsProcess, PsutilProcess):\n"
        "    try:\n"
        "        kind(1).read()\n"
        "        print('read')\n"
        "    except psutil.AccessDenied:\n"
        "        print('denied')\n"
    )
    root = Path(__file__).resolve().parent.parent
    answer = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    if answer in (["cannot", "drop", "privileges"], ["read", "read"]):
        pytest.skip("this user may read every process's open files")
    assert answer == ["denied", "denied"]


def test_cpu_times_from_one_read_are_psutils(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "stat").write_text(
        "cpu  1255817 5244 239213 5948538 9147 0 81616 29040 0 0\n"
        "cpu0 517923 696 112704 3094980 1908 0 37946 14946 0 0\n"
        "cpu1 737893 4548 126509 2853558 7238 0 43670 14094 0 0\n"
        "intr 193 0 9 0\nctxt 2843\nbtime 1763800000\n"
    )
    total, cores = read_cpu_times(ProcFile(str(tmp_path / "stat")))
    monkeypatch.setattr(psutil, "PROCFS_PATH", str(tmp_path))
    assert tuple(total) == tuple(psutil.cpu_times())
    assert [tuple(c) for c in cores] == [tuple(c) for c in psutil.cpu_times(percpu=True)]
    assert sum(total) == sum(psutil.cpu_times())


def test_cpu_times_of_this_machine_agree_with_psutil() -> None:
    before = psutil.cpu_times(percpu=True)
    total, cores = read_cpu_times(ProcFile("/proc/stat"))
    assert len(cores) == len(before) == psutil.cpu_count()
    assert abs(sum(total) - sum(psutil.cpu_times())) < 1.0
    for mine, theirs in zip(cores, before, strict=True):
        assert mine._fields[: len(theirs)] == theirs._fields
        assert abs(mine.user - theirs.user) < 0.5


def disk_line(major: int, minor: int, name: str, read_sectors: int, written_sectors: int) -> str:
    counters = [10, 0, read_sectors, 5, 20, 0, written_sectors, 7, 0, 9, 12, 0, 0, 0, 0, 0, 0]
    return f"{major:4d} {minor:7d} {name} {' '.join(map(str, counters))}\n"


def test_disk_totals_count_whole_disks_and_never_fall(tmp_path: Path) -> None:
    sys_block = tmp_path / "block"
    for disk in ("sda", "sdb", "cciss!c0d0"):
        (sys_block / disk).mkdir(parents=True)
    stats = tmp_path / "diskstats"

    def disks(*lines: str) -> tuple[int, int]:
        stats.write_text("".join(lines))
        return totals.read()

    totals = DiskTotals(tmp_path, sys_block)
    # The partition's sectors are in its disk's already; a 7-field 2.6 partition line too.
    assert disks(
        disk_line(8, 0, "sda", 100, 200),
        disk_line(8, 1, "sda1", 90, 190),
        "   8       2 sda2 4 40 6 60\n",
        disk_line(104, 0, "cciss/c0d0", 1, 2),
    ) == (101 * 512, 202 * 512)
    assert disks(disk_line(8, 0, "sda", 150, 200), disk_line(104, 0, "cciss/c0d0", 1, 2)) == (
        151 * 512,
        202 * 512,
    )
    # sda re-created (or wrapped): it restarted from zero, so all of its 30 are new.
    assert disks(disk_line(8, 0, "sda", 30, 5), disk_line(104, 0, "cciss/c0d0", 1, 2)) == (
        181 * 512,
        207 * 512,
    )
    # A disk that goes away takes nothing back; one that comes brings all it counted.
    assert disks(disk_line(8, 0, "sda", 40, 5)) == (191 * 512, 207 * 512)
    assert disks(disk_line(8, 0, "sda", 40, 5), disk_line(8, 16, "sdb", 7, 3)) == (
        198 * 512,
        210 * 512,
    )


def test_disk_rates_stay_calm_when_a_disk_is_re_created(tmp_path: Path) -> None:
    (tmp_path / "block" / "sda").mkdir(parents=True)
    (tmp_path / "block" / "sdb").mkdir(parents=True)
    stats = tmp_path / "diskstats"
    totals = DiskTotals(tmp_path, tmp_path / "block")
    rates = RateTracker()
    seen = []
    for now, lines in enumerate(
        [
            [disk_line(8, 0, "sda", 10**9, 0), disk_line(8, 16, "sdb", 2000, 0)],
            [disk_line(8, 0, "sda", 10**9 + 2000, 0), disk_line(8, 16, "sdb", 4000, 0)],
            [disk_line(8, 0, "sda", 10**9 + 4000, 0)],
            [disk_line(8, 0, "sda", 10**9 + 6000, 0), disk_line(8, 16, "sdb", 0, 0)],
            [disk_line(8, 0, "sda", 10**9 + 8000, 0), disk_line(8, 16, "sdb", 2000, 0)],
        ]
    ):
        stats.write_text("".join(lines))
        seen.append(rates.update("read", totals.read()[0], float(now)))
    assert seen == [None, 4000 * 512, 2000 * 512, 2000 * 512, 4000 * 512]


def test_disk_totals_of_this_machine_are_psutils() -> None:
    before = psutil.disk_io_counters()
    mine = DiskTotals().read()
    after = psutil.disk_io_counters()
    if before is None or after is None:
        pytest.skip("no disks on this machine")
    assert before.read_bytes <= mine[0] <= after.read_bytes
    assert before.write_bytes <= mine[1] <= after.write_bytes


def test_listen_counters_follow_a_header_that_moves(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    netstat = tmp_path / "net" / "netstat"
    netstat.write_text(
        "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 5 6\n"
        "IpExt: InNoRoutes\nIpExt: 0\n"
    )
    counters = ListenCounters(tmp_path)
    assert counters.read() == {"ListenOverflows": 5, "ListenDrops": 6}
    netstat.write_text(
        "IpExt: InNoRoutes\nIpExt: 0\n"
        "TcpExt: ListenDrops SyncookiesSent Other ListenOverflows\nTcpExt: 9 0 0 8\n"
    )
    assert counters.read() == {"ListenOverflows": 8, "ListenDrops": 9}
    netstat.write_text("IpExt: InNoRoutes\nIpExt: 0\n")
    assert counters.read() == {}
