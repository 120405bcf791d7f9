"""Write docs/console.svg: the console during a real `quell demo` surge.

    python docs/make_screenshot.py [--out docs/console.svg] [--size 120x36]

It starts the demo's lab, collector loop and traffic (as `quell demo` does),
attaches the console headless to their store, waits until the producer
surge's verdict is on screen and the playbook has run, and saves Textual's
SVG export of that frame. Everything it started is stopped again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from console.demo import Demo  # noqa: E402
from console.tui.demo_screen import _Script  # noqa: E402


async def shoot(store: Path, size: tuple[int, int], demo: Demo) -> str:
    from console.tui.app import QuellConsole
    from console.tui.feeds import plan_feed
    from console.tui.settings import Settings

    app = QuellConsole(plan_feed(store=store), Settings(refresh_s=1.0, chart_minutes=1))
    async with app.run_test(size=size) as pilot:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            await pilot.pause()
            verdicts = app.snapshot.verdicts if app.snapshot else ()
            applied = any(e.kind == "recovered" for e in demo.events)
            if verdicts and applied:
                break
        await asyncio.sleep(1.5)
        await pilot.pause()
        svg = app.export_screenshot(title="quell console: a producer surge, found")
        await pilot.press("q")
    return svg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console.svg")
    parser.add_argument("--size", default="120x36")
    args = parser.parse_args()
    width, height = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="quell-shot-") as tmp:
        demo = Demo(Path(tmp), 90.0)
        script = _Script(demo)
        script.start()
        script.ready.wait(90)
        try:
            args.out.write_text(asyncio.run(shoot(demo.store_path, (width, height), demo)))
        finally:
            script.cancel()
            script.join(60)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
