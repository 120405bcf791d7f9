"""Benchmark the bundled engine: does it keep its cost model, and what does it cost itself?

1. Model accuracy: for three settings, keep the engine saturated (closed loop,
   twice as many requests in flight as slots) with fixed prompt and
   generation lengths, and compare completed requests per second with the
   cost model's prediction.
2. Overhead: with near-zero token costs, wrk at 32 connections on one core
   against the engine pinned to the other; requests/s, p50 and p99.

    python bench/engine.py [--duration 10] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from inference.engine.cost_model import CostModel  # noqa: E402
from inference.engine.tokens import prompt_tokens  # noqa: E402


@dataclass(frozen=True)
class Setting:
    name: str
    slots: int
    kv_tokens: int
    prompt: int
    output: int
    cost: CostModel

    def flags(self) -> list[str]:
        return [
            "--slots", str(self.slots),
            "--kv-tokens", str(self.kv_tokens),
            "--max-waiting", "100000",
            "--max-model-len", str(max(8192, self.prompt + self.output)),
            "--decode-step-ms", str(self.cost.decode_step_ms),
            "--decode-ms-per-seq", str(self.cost.decode_ms_per_seq),
            "--prefill-ms-per-token", str(self.cost.prefill_ms_per_token),
        ]  # fmt: skip

    def predicted(self) -> float:
        return self.cost.predicted_throughput(self.slots, self.kv_tokens, self.prompt, self.output)


SETTINGS = (
    Setting("chat, 8 slots", 8, 65536, 128, 32, CostModel(0.02, 10.0, 0.1)),
    Setting("long prompts, 32 slots", 32, 65536, 512, 64, CostModel(0.01, 8.0, 0.05)),
    Setting("KV-bound, 64 slots / 40 fit", 64, 40 * 80, 64, 16, CostModel(0.005, 4.0, 0.02)),
)


def messages_of(tokens: int) -> list[dict[str, str]]:
    """A one-message chat whose prompt is exactly ``tokens`` tokens."""
    framing = prompt_tokens([{"role": "user", "content": ""}])
    words = tokens - framing
    if words < 1:
        raise ValueError(f"a prompt needs at least {framing + 1} tokens")
    messages = [{"role": "user", "content": " ".join(["tok"] * words)}]
    assert prompt_tokens(messages) == tokens
    return messages


@contextmanager
def engine(flags: list[str], cpu: str | None) -> Iterator[str]:
    command = [sys.executable, "-m", "console", "engine", "serve", "--port", "0", *flags]
    if cpu is not None and shutil.which("taskset"):
        command = ["taskset", "-c", cpu, *command]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.search(r"listening on (\S+)", line)
        if not match:
            raise RuntimeError(f"engine did not start: {line}{process.stdout.read()}")
        yield match.group(1)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def saturate(url: str, setting: Setting, warmup: float, duration: float) -> float:
    """Completed requests per second while 2 x slots requests are always in flight."""
    body = {
        "model": "quell-mini",
        "messages": messages_of(setting.prompt),
        "max_tokens": setting.output,
    }
    finished: list[float] = []
    warmup = max(warmup, 2 * setting.slots / setting.predicted())
    stop = time.monotonic() + warmup + duration
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client(delay: float) -> None:
            # Fixed-length requests that start together finish together, in
            # batches of ``slots``, and a window that cuts a batch miscounts
            # by a whole batch. Staggered starts keep completions spread out,
            # as real traffic does, and continuous batching preserves that.
            await asyncio.sleep(delay)
            while time.monotonic() < stop:
                async with session.post(f"{url}/v1/chat/completions", json=body) as response:
                    await response.read()
                    if response.status == 200:
                        finished.append(time.monotonic())

        started = time.monotonic()
        in_flight = 2 * setting.slots
        batch_seconds = setting.slots / setting.predicted()
        clients = [
            asyncio.create_task(client(i * batch_seconds / in_flight)) for i in range(in_flight)
        ]
        await asyncio.gather(*clients)
    window_start = started + warmup
    window_end = window_start + duration
    return sum(1 for t in finished if window_start <= t < window_end) / duration


WRK_BODY = (
    '{"model":"quell-mini","messages":[{"role":"user","content":"How deep is the queue?"}],'
    '"max_tokens":16}'
)
WRK_SCRIPT = f"""
wrk.method = "POST"
wrk.body = '{WRK_BODY}'
wrk.headers["Content-Type"] = "application/json"
"""


def parse_wrk(output: str) -> tuple[float, float, float]:
    def millis(label: str) -> float:
        match = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE)
        if not match:
            raise RuntimeError(f"no {label} latency in wrk output:\n{output}")
        value, unit = float(match.group(1)), match.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate:
        raise RuntimeError(f"no rate in wrk output:\n{output}")
    if re.search(r"Non-2xx or 3xx responses", output):
        raise RuntimeError(f"wrk saw error answers:\n{output}")
    return float(rate.group(1)), millis("50%"), millis("99%")


def overhead(duration: float, runs: int) -> list[tuple[float, float, float]]:
    flags = [
        "--decode-step-ms", "0", "--decode-ms-per-seq", "0", "--prefill-ms-per-token", "0",
        "--slots", "256", "--max-waiting", "4096",
    ]  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp, engine(flags, cpu="0") as url:
        script = Path(tmp) / "post.lua"
        script.write_text(WRK_SCRIPT)
        command = ["wrk", "-t1", "-c32", f"-d{duration:g}s", "--latency", "-s", str(script)]
        if shutil.which("taskset"):
            command = ["taskset", "-c", "1", *command]
        subprocess.run([*command[:-3], "-d2s", *command[-2:], f"{url}/v1/chat/completions"],
                       capture_output=True, check=True)  # fmt: skip
        for _ in range(runs):
            done = subprocess.run(
                [*command, f"{url}/v1/chat/completions"], capture_output=True, text=True, check=True
            )
            results.append(parse_wrk(done.stdout))
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument("--runs", type=int, default=3, help="wrk runs; the median is reported")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores, {platform_cpu()}")
    print()
    print("## Cost model: predicted vs measured (saturated, closed loop at 2 x slots)")
    print()
    print("| setting | slots (fit) | prompt | output | predicted req/s | measured req/s | error |")
    print("|---|---|---|---|---|---|---|")
    for setting in SETTINGS:
        with engine(setting.flags(), cpu="0") as url:
            measured = asyncio.run(saturate(url, setting, args.warmup, args.duration))
        predicted = setting.predicted()
        fit = setting.cost.effective_slots(
            setting.slots, setting.kv_tokens, setting.prompt, setting.output
        )
        error = (measured - predicted) / predicted * 100
        print(
            f"| {setting.name} | {setting.slots} ({fit}) | {setting.prompt} | {setting.output} "
            f"| {predicted:.1f} | {measured:.1f} | {error:+.1f}% |"
        )
    print()
    print("## Overhead: near-zero token costs, wrk -t1 -c32, engine on core 0, wrk on core 1")
    print()
    if not shutil.which("wrk"):
        print("wrk not found: install the Debian package 'wrk'")
        return 1
    results = overhead(args.duration, args.runs)
    print("| run | req/s | p50 ms | p99 ms |")
    print("|---|---|---|---|")
    for index, (rate, p50, p99) in enumerate(results, 1):
        print(f"| {index} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
    rate, p50, p99 = (statistics.median(column) for column in zip(*results, strict=True))
    print(f"| median | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
    return 0


def platform_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
