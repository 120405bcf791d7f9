"""Linux /proc readings the host collector takes every tick, cheaper than psutil's.

psutil answers each question on its own, which at 1 Hz was about a fifth of
the daemon's CPU (bench/collectors.py): /proc/stat read twice for total and
per-core times, every /proc/diskstats device looked up under /sys/block on
each call, four files per watched process plus a fresh Process to tell a
reused pid. These readers take the same numbers from one read per file and
remember what does not change between ticks: which devices are whole disks,
where /proc/net/netstat keeps its listen counters, when a process started.

They raise OSError where /proc cannot answer; the host collector then asks
psutil, which is also what it uses off Linux.
"""

from __future__ import annotations

import os
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# /proc/diskstats counts 512-byte sectors whatever the device's own sector size.
SECTOR_SIZE = 512
# Which diskstats names are whole disks changes only when a device comes or
# goes, and that changes the set of names; the periodic look is for a device
# re-created under the same name as another kind.
WHOLE_DISKS_REFRESH_S = 60.0


class ProcFile:
    """A /proc file held open and read again from its start on each call.

    A fresh open walks the path under /proc every time, and the kernel
    renders a file longer than a page twice on it: once into a page-sized
    buffer that turns out too small, again into a larger one. An open file
    keeps the larger buffer; /proc/net/netstat (4 KiB) costs half as much.
    """

    __slots__ = ("__weakref__", "_close", "_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1
        self._close: weakref.finalize[..., ProcFile] | None = None

    def read(self) -> bytes:
        if self._fd < 0:
            self._fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            self._close = weakref.finalize(self, os.close, self._fd)
        os.lseek(self._fd, 0, os.SEEK_SET)
        # A short read is not the end: a file of many records comes a buffer at a time.
        chunks = []
        while chunk := os.read(self._fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        if self._close is not None:
            self._close()
        self._fd = -1


class CpuTimes(NamedTuple):
    """Seconds in each mode, as psutil.cpu_times() reports them on Linux."""

    user: float
    nice: float
    system: float
    idle: float
    iowait: float
    irq: float
    softirq: float
    steal: float = 0.0
    guest: float = 0.0
    guest_nice: float = 0.0


def _cpu_line(line: bytes) -> CpuTimes:
    # Divided field by field as psutil does, so sums come out to the same floats.
    return CpuTimes(*[float(x) / CLOCK_TICKS for x in line.split()[1:11]])


def read_cpu_times(stat: ProcFile) -> tuple[CpuTimes, list[CpuTimes]]:
    """All CPUs together and each core, from one read of /proc/stat."""
    data = stat.read()
    # The interrupt counters after the CPU lines run to kilobytes; no need to split them.
    end = data.find(b"\nintr")
    lines = (data if end < 0 else data[:end]).split(b"\n")
    if not lines[0].startswith(b"cpu "):
        raise OSError(f"no CPU line in {stat.path}")
    cores = [_cpu_line(line) for line in lines[1:] if line.startswith(b"cpu")]
    return _cpu_line(lines[0]), cores


class DiskTotals:
    """Bytes read and written by whole disks, summed, never going down.

    Partitions are left out because their disk already counts them, as
    psutil.disk_io_counters() does. Each disk adds what it counted since the
    previous reading; one whose counter went down was re-created or wrapped
    and adds its new count, and one not seen before adds all it has counted,
    as psutil's wrap handling does. A disk that vanishes takes nothing away:
    the sum would fall, and the rate layer would read the fall as a reset and
    report the whole sum as one second's traffic.
    """

    def __init__(self, root: Path = Path("/proc"), sys_block: Path = Path("/sys/block")) -> None:
        self._file = ProcFile(f"{root}/diskstats")
        self._sys_block = os.fsencode(sys_block)
        self._names: frozenset[bytes] = frozenset()
        self._whole: frozenset[bytes] = frozenset()
        self._looked_at = float("-inf")
        self._last: dict[bytes, tuple[int, int]] = {}
        self.read_bytes = 0
        self.write_bytes = 0

    def read(self) -> tuple[int, int]:
        sectors: dict[bytes, tuple[int, int]] = {}
        for line in self._file.read().splitlines():
            fields = line.split()
            count = len(fields)
            # The layouts psutil knows: 2.4 puts the name fourth, a 2.6 partition
            # line has four counters, and 4.18 and 5.5 appended columns.
            if count == 15:
                sectors[fields[3]] = int(fields[5]), int(fields[9])
            elif count == 14 or count >= 18:
                sectors[fields[2]] = int(fields[5]), int(fields[9])
            elif count == 7:
                sectors[fields[2]] = int(fields[4]), int(fields[6])
            elif count:
                raise ValueError(f"not sure how to interpret line {line!r}")
        names = frozenset(sectors)
        if names != self._names or time.monotonic() - self._looked_at >= WHOLE_DISKS_REFRESH_S:
            self._whole = frozenset(name for name in names if self._is_whole_disk(name))
            self._names, self._looked_at = names, time.monotonic()
        last: dict[bytes, tuple[int, int]] = {}
        for name in self._whole:
            read, written = last[name] = sectors[name]
            before = self._last.get(name)
            if before is None:
                self.read_bytes += read * SECTOR_SIZE
                self.write_bytes += written * SECTOR_SIZE
            else:
                # A count that went down restarted from zero, as the rate layer reads it.
                self.read_bytes += (read if read < before[0] else read - before[0]) * SECTOR_SIZE
                self.write_bytes += (
                    written if written < before[1] else written - before[1]
                ) * SECTOR_SIZE
        self._last = last
        return self.read_bytes, self.write_bytes

    def _is_whole_disk(self, name: bytes) -> bool:
        # A device with a slash in its name (cciss/c0d0) has a '!' in sysfs.
        return os.access(os.path.join(self._sys_block, name.replace(b"/", b"!")), os.F_OK)


class ListenCounters:
    """TcpExt ListenOverflows and ListenDrops, from /proc/net/netstat.

    The TcpExt header names about 120 counters; it is parsed again only when
    it is not the line it was, so a tick splits one line of values.
    """

    NAMES = ("ListenOverflows", "ListenDrops")

    def __init__(self, root: Path = Path("/proc")) -> None:
        self._file = ProcFile(f"{root}/net/netstat")
        self._header = b""
        self._line = -1
        self._positions: list[tuple[str, int]] = []

    def read(self) -> dict[str, int]:
        lines = self._file.read().split(b"\n")
        line = self._line
        if not (0 <= line < len(lines) - 1 and lines[line] == self._header):
            line = self._find(lines)
            if line < 0:
                return {}
        values = lines[line + 1].split()
        return {name: int(values[p]) for name, p in self._positions if p < len(values)}

    def _find(self, lines: list[bytes]) -> int:
        self._line, self._header, self._positions = -1, b"", []
        for line in range(0, len(lines) - 1, 2):
            header = lines[line]
            if header.startswith(b"TcpExt:") and lines[line + 1].startswith(b"TcpExt:"):
                # The last of a repeated name wins, as in a dict built from the pair.
                where = {name.decode(): p for p, name in enumerate(header.split()) if p}
                self._positions = [(name, where[name]) for name in self.NAMES if name in where]
                self._line, self._header = line, header
                return line
        return -1


@dataclass(frozen=True, slots=True)
class ProcessReading:
    cpu_seconds: float  # user + system
    rss_bytes: int
    threads: int
    open_files: int


class ProcfsProcess:
    """One watched process read from /proc/<pid>/stat, statm and the length of its fd folder.

    /proc/<pid>/stat holds the CPU times and the thread count psutil takes
    from stat and status, and the start time psutil compares to tell a
    reused pid. Its resident pages are not statm's: newer kernels sum the
    per-CPU counts for statm but give stat a cheaper estimate, some pages
    off. The files stay open: they answer for the process they were opened
    on, and once that one is reaped they fail with ESRCH even when the pid
    has been handed to another. Errors are
    psutil's, so a caller handles both kinds of process alike: NoSuchProcess
    when it exited or its pid now names another, AccessDenied when /proc
    will not say.
    """

    __slots__ = ("_fd_dir", "_fields", "_start", "_stat", "_statm", "pid")

    def __init__(self, pid: int, root: Path = Path("/proc")) -> None:
        self.pid = pid
        self._stat = ProcFile(f"{root}/{pid}/stat")
        self._statm = ProcFile(f"{root}/{pid}/statm")
        self._fd_dir = f"{root}/{pid}/fd"
        fields = self._read_stat()
        self._start = fields[19]
        self._fields: list[bytes] | None = fields

    def _read_stat(self) -> list[bytes]:
        try:
            data = self._stat.read()
        except (FileNotFoundError, ProcessLookupError) as gone:
            raise psutil.NoSuchProcess(self.pid) from gone
        except PermissionError as denied:
            raise psutil.AccessDenied(self.pid) from denied
        # The command name is in parentheses and may itself hold spaces and ')'.
        fields = data[data.rfind(b")") + 2 :].split()
        if len(fields) < 22:
            raise psutil.NoSuchProcess(self.pid)
        return fields

    def is_running(self) -> bool:
        """Whether the pid still names the process first seen; keeps the stat for read()."""
        try:
            fields = self._read_stat()
        except psutil.NoSuchProcess:
            return False
        except psutil.AccessDenied:
            return True
        self._fields = fields
        return fields[19] == self._start

    def read(self) -> ProcessReading:
        # The stat that is_running() took a moment ago serves once; a tick asks
        # is_running() of every watched process before reading any.
        fields, self._fields = self._fields, None
        if fields is None:
            fields = self._read_stat()
        if fields[19] != self._start:
            raise psutil.NoSuchProcess(self.pid, msg="pid reused by another process")
        try:
            resident_pages = int(self._statm.read().split(maxsplit=2)[1])
            files = len(os.listdir(self._fd_dir))
        except (FileNotFoundError, ProcessLookupError) as gone:
            raise psutil.NoSuchProcess(self.pid) from gone
        except PermissionError as denied:
            raise psutil.AccessDenied(self.pid) from denied
        cpu_seconds = float(fields[11]) / CLOCK_TICKS + float(fields[12]) / CLOCK_TICKS
        return ProcessReading(cpu_seconds, resident_pages * PAGE_SIZE, int(fields[17]), files)


class PsutilProcess:
    """The same readings through psutil, where there is no Linux /proc."""

    __slots__ = ("_process", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._process = psutil.Process(pid)

    def is_running(self) -> bool:
        return self._process.is_running()

    def read(self) -> ProcessReading:
        p = self._process
        with p.oneshot():
            times = p.cpu_times()
            rss = p.memory_info().rss
            threads = p.num_threads()
            files = p.num_fds()
        return ProcessReading(times.user + times.system, rss, threads, files)
