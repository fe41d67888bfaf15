"""Shared pieces of the benchmark scripts: environment header, timing, table and JSON output.

    import common                      # the scripts put this folder on sys.path
    common.apply_project_xla_flags()   # before JAX starts its backend
    print(common.environment_header())
    median_s, min_s, max_s = common.timeit(fn, warmup=2, rounds=10)

Every script prints the header (machine, versions, XLA flags, command), one JSON line per
measurement and one table, so numbers can be compared across sessions and machines.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import sys
import time
from typing import Any, Callable, Sequence

def apply_project_xla_flags(extra: Sequence[str] = ()) -> str:
    """The project's XLA flags for this CPU (`pcam_jax.runtime.project_xla_flags`) and ``extra``, merged
    into ``XLA_FLAGS`` (flags already there win), and its allocator setting, as the CLI entry
    points do.

    Must run before JAX initialises its backend. Returns the resulting ``XLA_FLAGS``.
    Set ``PCAM_JAX_NO_XLA_FLAGS=1`` / ``PCAM_JAX_DEFAULT_MALLOC=1`` to measure XLA's /
    glibc's own defaults.
    """
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
    from pcam_jax import runtime

    # As the entry points, minus the compilation cache: benchmarks warm up anyway.
    return runtime.configure(extra, compilation_cache=False)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        with open("/proc/meminfo") as f:
            kib = int(next(line for line in f if line.startswith("MemTotal")).split()[1])
        return f"{kib / 2 ** 20:.1f} GiB"
    except (OSError, StopIteration, ValueError):
        return "unknown"


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package)
    except Exception:  # noqa: BLE001  (not installed, or no metadata)
        return "-"


def environment_header() -> str:
    """'# '-prefixed lines: date, machine, CPU model and cores, memory, versions, devices, flags, command.

    Initialises the JAX backend (to list devices): call `apply_project_xla_flags` first.
    """
    import jax

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    devices = jax.devices()
    kinds = sorted({d.device_kind for d in devices})
    versions = ", ".join(f"{p} {_version(p)}" for p in ("jax", "jaxlib", "flax", "numpy"))
    lines = [
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M:%S} UTC",
        f"machine: {platform.machine()}, {platform.system()} {platform.release()}",
        f"cpu: {_cpu_model()}, {os.cpu_count()} cores ({usable} usable), memory {_memory_gib()}",
        f"python {platform.python_version()}, {versions}",
        f"jax backend: {jax.default_backend()}, {len(devices)} device(s): {', '.join(kinds)}",
        f"XLA_FLAGS: {os.environ.get('XLA_FLAGS', '') or '(none)'} (CPU rule: {_cpu_rule()})",
        f"allocator: {_allocator_setting()}",
        f"command: {shlex.join([os.path.basename(sys.executable)] + sys.argv)}",
    ]
    return "\n".join(f"# {line}" for line in lines)


def _cpu_rule() -> str:
    from pcam_jax import runtime

    return runtime.cpu_rule().name


def _allocator_setting() -> str:
    from pcam_jax import runtime

    if runtime.allocator_configured():
        return "glibc, freed memory reused (pcam_jax.runtime.configure_allocator)"
    return "C library defaults"


def timeit(fn: Callable[[], Any], warmup: int = 2, rounds: int = 10) -> tuple[float, float, float]:
    """(median, min, max) seconds of ``fn()`` over ``rounds`` calls after ``warmup`` calls.

    Each call's result is waited for (``jax.block_until_ready``), so asynchronous dispatch
    does not hide the work; warm-up absorbs compilation.
    """
    return timeit_interleaved({"fn": fn}, warmup=warmup, rounds=rounds)["fn"]


def timeit_interleaved(fns: dict[str, Callable[[], Any]], warmup: int = 2,
                       rounds: int = 10) -> dict[str, tuple[float, float, float]]:
    """`timeit` for several functions, one call of each per round (A, B, C, A, B, C, ...).

    On a machine whose speed drifts, timing A's rounds and then B's can favour either; in
    turns, drift touches all alike. Returns ``{name: (median, min, max)}`` seconds.
    """
    import jax

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in fns.values():
        for _ in range(warmup):
            jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t), max(t)) for name, t in times.items()}


def json_line(row: dict) -> str:
    """One measurement as a JSON line (floats rounded to 6 significant digits)."""
    clean = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in row.items()}
    return json.dumps(clean)


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """A plain-text table; ``columns`` are (key, title, format spec such as '.1f' or '')."""
    cells = [[title for _, title, _ in columns]]
    for row in rows:
        cells.append([("-" if row.get(key) is None else format(row[key], spec)) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def run_json_lines(cmd: Sequence[str], caller: str) -> list[dict]:
    """Run a benchmark process; its JSON result lines (``{...}``), or exit naming the command and
    its stderr's tail when it fails (the benchmarks that pair JAX and PyTorch processes)."""
    import subprocess
    import sys

    done = subprocess.run(list(cmd), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{caller}: `{' '.join(cmd)}` failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    if not rows:
        sys.exit(f"{caller}: `{' '.join(cmd)}` printed no JSON result; its output was:\n{done.stdout[-2000:]}")
    return rows
