"""The host collector on this very machine."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import namedtuple
from pathlib import Path

import psutil
import pytest

from collectors import listen_queues
from collectors.host import HostCollector, cpu_percent, read_listen_counters, read_memory
from collectors.model import CollectResult


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
