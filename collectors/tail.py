"""Follow a log file the way `tail -F` does, across rotation and truncation.

- Rotation by rename (logrotate's default, the gateway's own rotation): the
  path now names a new inode. What was still unread in the old file is read
  to its end first, then the new file from its start.
- Truncation in place (``copytruncate``, ``> file``): the file got shorter
  than where we were; read again from the start. A file truncated and then
  refilled past the old offset between two polls cannot be told from one
  that grew; polling often keeps that window small.
- A file that does not exist yet is waited for; once it appears it is read
  from its start, since everything in it is new.

Reading starts at the end of an existing file unless asked otherwise: the
console wants what happens now, not last week's log. Each poll reads a
bounded amount so one huge burst cannot stall the loop; the rest waits for
the next poll.

Lines longer than MAX_LINE_BYTES are skipped (and counted), without ever
holding more than that much of one line in memory.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import BinaryIO

MAX_LINE_BYTES = 64 * 1024
MAX_READ_BYTES = 4 << 20


class FileTailer:
    def __init__(
        self, path: Path, *, from_start: bool = False, max_read_bytes: int = MAX_READ_BYTES
    ) -> None:
        self.path = path
        self.max_read_bytes = max_read_bytes
        self.skipped_long = 0
        self._file: BinaryIO | None = None
        self._identity: tuple[int, int] | None = None
        self._offset = 0
        self._partial = bytearray()
        self._skipping = False
        self._first_open = not from_start
        # The end is where the file is when watching starts, not at the first
        # poll. An unreadable file is reported by poll(), not here.
        with contextlib.suppress(OSError):
            self._open()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> bool:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            self._first_open = False  # whatever appears later is new
            return False
        stat = os.fstat(handle.fileno())
        self._file = handle
        self._identity = (stat.st_dev, stat.st_ino)
        self._offset = stat.st_size if self._first_open else 0
        self._first_open = False
        handle.seek(self._offset)
        self._partial.clear()
        self._skipping = False
        return True

    def unchanged(self) -> bool:
        """True when the file is the one open and holds nothing past what was read.

        One stat: the caller skips the poll, and the thread it runs in, on
        the ticks a quiet log gives nothing to read.
        """
        if self._file is None:
            return False
        try:
            current = os.stat(self.path)
        except OSError:
            return False
        return (
            current.st_dev,
            current.st_ino,
        ) == self._identity and current.st_size == self._offset

    def poll(self) -> list[bytes]:
        """Complete lines added since the last poll (without their newlines).

        Raises OSError for trouble other than the file being absent.
        """
        lines: list[bytes] = []
        budget = self.max_read_bytes
        if self._file is None and not self._open():
            return lines
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            # Renamed away and no successor yet: the writer may still be
            # appending to the old file until it reopens, so keep reading it.
            more, _ = self._read(budget)
            return more
        if (current.st_dev, current.st_ino) != self._identity:
            # Finish the old file first: lines written just before the rename.
            lines, budget = self._read(budget)
            if budget <= 0:
                return lines  # more of the old file next time
            if self._partial and not self._skipping:
                # Its last line has no newline and never will now.
                lines.append(bytes(self._partial))
            self.close()
            if not self._open():
                return lines
        assert self._file is not None
        if os.fstat(self._file.fileno()).st_size < self._offset:
            self._file.seek(0)
            self._offset = 0
            self._partial.clear()
            self._skipping = False
        more, _ = self._read(budget)
        lines.extend(more)
        return lines

    def _read(self, budget: int) -> tuple[list[bytes], int]:
        assert self._file is not None
        lines: list[bytes] = []
        while budget > 0:
            chunk = self._file.read(min(budget, 1 << 16))
            if not chunk:
                break
            budget -= len(chunk)
            self._offset += len(chunk)
            lines.extend(self._split(chunk))
        return lines, budget

    def _split(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            piece = chunk[start:] if end < 0 else chunk[start:end]
            if not self._skipping:
                if len(self._partial) + len(piece) > MAX_LINE_BYTES:
                    self._partial.clear()
                    self._skipping = True
                    self.skipped_long += 1
                else:
                    self._partial += piece
            if end < 0:
                return lines
            if not self._skipping:
                line = bytes(self._partial)
                lines.append(line[:-1] if line.endswith(b"\r") else line)
            self._partial.clear()
            self._skipping = False
            start = end + 1
