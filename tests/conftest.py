from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# CI installs every Debian package the suite can use and sets this, so that a
# missing server fails the run instead of quietly skipping its tests.
REQUIRE_SYSTEM_DEPS = os.environ.get("QUELL_REQUIRE_SYSTEM_DEPS") == "1"


def require_program(name: str, package: str) -> str:
    """The path of ``name``, or skip (fail under CI) naming the Debian package."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} not found: install the Debian package '{package}' to run this test"
        if REQUIRE_SYSTEM_DEPS:
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def fixtures() -> Path:
    """Real exposition and log formats (see fixtures/README.md)."""
    return Path(__file__).resolve().parent / "fixtures"
