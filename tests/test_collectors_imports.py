"""The headless collector never loads the screen: no Textual, no console, no playbooks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import collectors

FORBIDDEN = ("textual", "console", "playbooks", "inference")


def collector_modules() -> list[str]:
    package = Path(collectors.__file__).parent
    return sorted(f"collectors.{p.stem}" for p in package.glob("*.py") if p.stem != "__init__")


def test_every_collector_module_imports_without_textual_console_playbooks_or_inference() -> None:
    modules = collector_modules()
    assert "collectors.host" in modules and "collectors.presets" in modules
    check = (
        f"import sys\nimport {', '.join(modules)}\n"
        f"loaded = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_gpu_support_is_imported_only_when_used() -> None:
    check = "import sys, collectors.gpu\nassert 'pynvml' not in sys.modules\n"
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
