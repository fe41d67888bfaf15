"""Named sections of `pcam-jax evaluate`: one progress bar with an ETA each, and their seconds.

    sections = Sections(show=True)
    with sections.section("test split: probabilities and maps", total=300, unit="img") as bar:
        for batch in batches:
            ...
            bar.update(len(batch))
    sections.seconds          # {"test split: probabilities and maps": 41.2, ...}  (wall)
    sections.cpu_seconds      # the process's CPU seconds in each section (all threads)

The bars are tqdm's, on stderr (stdout keeps the tables). The seconds go into metrics.json
(``section_seconds``, ``section_cpu_seconds``), so a slow evaluation says where its time went
without a profiler; on a machine shared with other jobs the CPU seconds are the steadier
measure (wall seconds stretch with the load). A section entered twice adds up.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, s: str) -> None:
        pass


class Sections:
    """Times named sections; shows a tqdm bar per section when ``show``."""

    def __init__(self, show: bool = True):
        self.show = show
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def section(self, name: str, total: int | None = None, unit: str = "img") -> Iterator:
        """A bar named ``name`` counting to ``total`` ``unit``s (None: no ETA, a counter)."""
        bar = _NoBar()
        if self.show:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, desc=name, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=True)
        start, cpu_start = time.perf_counter(), time.process_time()
        try:
            yield bar
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + time.process_time() - cpu_start
            if self.show:
                bar.close()

    def table(self) -> str:
        """'name  wall seconds  share  CPU seconds' lines, slowest first."""
        total = sum(self.seconds.values()) or 1.0
        width = max((len(n) for n in self.seconds), default=0)
        return "\n".join(f"{name:<{width}}  {s:8.1f} s  {100 * s / total:5.1f}%  cpu {self.cpu_seconds[name]:8.1f} s"
                         for name, s in sorted(self.seconds.items(), key=lambda kv: -kv[1]))
