"""Process-wide JAX/XLA settings the project applies before JAX starts its backend.

    from pcam_jax import runtime
    runtime.configure()          # first thing in a CLI entry point, before any jax array exists

Three things happen:

* ``XLA_FLAGS`` gets the project's default flags for this CPU (`project_xla_flags`: the first
  of `CPU_RULES` whose features /proc/cpuinfo lists), merged with what the user already set
  there: a flag the user set (same name) wins, so any default can be overridden, e.g.
  ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=+individual_convolution`` restores XLA's
  own choice. Set ``PCAM_JAX_NO_XLA_FLAGS=1`` to add none of them.
* On Linux with glibc, the C allocator keeps freed memory for reuse (`configure_allocator`):
  XLA's CPU runtime allocates a step's scratch memory (100-350 MB for a train step) afresh
  each step, and glibc otherwise maps it from the OS and unmaps it again, so every step
  page-faulted all of it back in (17% of CPU time at b32@128). Set
  ``PCAM_JAX_DEFAULT_MALLOC=1`` to keep glibc's defaults.
* JAX's persistent compilation cache is switched on (``$PCAM_JAX_COMPILATION_CACHE``, else
  ``~/.cache/pcam_jax/jax``; an empty value disables it), so a second run of the same shapes
  skips most of the 3-4 s compile of a train step.

`tensorflow()` imports TensorFlow (for tf.data and TFDS only) with every GPU hidden from it,
so it never takes accelerator memory that JAX needs.

Each flag's measured effect is recorded in docs/PERFORMANCE.md. XLA reads ``XLA_FLAGS`` once,
when the backend starts: calling `configure` after the first computation changes nothing for
this process (it warns).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import sys
import warnings
from typing import Sequence

# XLA 0.10.2 hands each convolution to YNNPACK by default; this flag gives them back to XLA's
# own (Eigen) convolutions and keeps YNNPACK for dots and reductions (XLA's other defaults).
YNN_CONVOLUTIONS_OFF = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


@dataclasses.dataclass(frozen=True)
class CpuRule:
    """XLA flags for CPUs that have every feature in ``requires`` (/proc/cpuinfo flags, plus
    ``vendor:<vendor_id>``). Each rule's flags were measured faster on that CPU kind
    (docs/PERFORMANCE.md); a CPU kind nobody measured falls through to the last rule."""

    name: str
    requires: tuple[str, ...]
    flags: tuple[str, ...]
    measured: str


# First match wins. CPU-only flags: the GPU backend ignores them.
CPU_RULES: tuple[CpuRule, ...] = (
    CpuRule("amd-avx512", ("vendor:AuthenticAMD", "avx512f"), (),
            "2-core AMD EPYC Zen 4 (AVX-512): XLA's default YNNPACK convolutions beat Eigen's"),
    CpuRule("default", (), (YNN_CONVOLUTIONS_OFF,),
            "2-core AMD EPYC, AVX2 only: Eigen convolutions made the stage-1 step 8% faster at b32@128 "
            "and ~15% at b16@320; kept for every CPU kind not measured otherwise (Intel Xeon included)"),
)

COMPILATION_CACHE_ENV = "PCAM_JAX_COMPILATION_CACHE"
NO_FLAGS_ENV = "PCAM_JAX_NO_XLA_FLAGS"
DEFAULT_MALLOC_ENV = "PCAM_JAX_DEFAULT_MALLOC"

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_allocator_configured = False


def merge_xla_flags(user_flags: str, project_flags: Sequence[str]) -> str:
    """``user_flags`` plus each project flag whose name (text before '=') the user did not set.

    >>> merge_xla_flags("--a=1 --b", ["--a=2", "--c=3"])
    '--a=1 --b --c=3'
    """
    current = user_flags.split()
    names = {flag.split("=", 1)[0] for flag in current}
    added = [flag for flag in project_flags if flag.split("=", 1)[0] not in names]
    return " ".join(current + added)


def _backend_started() -> bool:
    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge._backends)  # noqa: SLF001  (no public "is initialised" query)
    except (ImportError, AttributeError):
        return False


def parse_cpu_features(cpuinfo: str) -> frozenset[str]:
    """The first processor's feature flags in /proc/cpuinfo text, plus ``vendor:<vendor_id>``.

    >>> sorted(parse_cpu_features("vendor_id : AuthenticAMD\\nflags : fpu avx2\\n"))
    ['avx2', 'fpu', 'vendor:AuthenticAMD']
    """
    features: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "vendor_id" and not any(f.startswith("vendor:") for f in features):
            features.add("vendor:" + value.strip())
        elif key == "flags":
            features.update(value.split())
            break  # every core reports the same flags
    return frozenset(features)


@functools.lru_cache(maxsize=1)
def cpu_features() -> frozenset[str]:
    """`parse_cpu_features` of this machine's /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpu_features(f.read())
    except OSError:
        return frozenset()


def cpu_rule(features: frozenset[str] | None = None) -> CpuRule:
    """The first of `CPU_RULES` whose requirements ``features`` (default: this CPU's) meet."""
    features = cpu_features() if features is None else features
    return next(rule for rule in CPU_RULES if set(rule.requires) <= features)


def project_xla_flags(features: frozenset[str] | None = None) -> tuple[str, ...]:
    """The project's XLA flags for a CPU with ``features`` (default: this one): `cpu_rule`'s."""
    return cpu_rule(features).flags


def configure_xla_flags(extra: Sequence[str] = ()) -> str:
    """Adds `project_xla_flags` and ``extra`` to ``$XLA_FLAGS`` (user's flags win); returns it."""
    project = () if os.environ.get(NO_FLAGS_ENV, "") not in ("", "0") else project_xla_flags()
    merged = merge_xla_flags(os.environ.get("XLA_FLAGS", ""), (*project, *extra))
    if merged != os.environ.get("XLA_FLAGS", "") and _backend_started():
        warnings.warn("pcam_jax.runtime.configure() ran after JAX started its backend: the project's "
                      "XLA flags do not apply to this process. Call it before the first JAX computation.",
                      stacklevel=3)
    os.environ["XLA_FLAGS"] = merged
    return merged


def enable_compilation_cache(directory: str | None = None) -> str | None:
    """Turns on JAX's persistent compilation cache; returns its directory (None when disabled).

    ``$PCAM_JAX_COMPILATION_CACHE`` wins over ``directory``; an empty value disables the cache.
    A cache directory already chosen (by tests or the user) is left alone.
    """
    import jax

    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    directory = os.environ.get(COMPILATION_CACHE_ENV, directory)
    if directory == "":
        return None
    directory = directory or str(pathlib.Path.home() / ".cache" / "pcam_jax" / "jax")
    jax.config.update("jax_compilation_cache_dir", directory)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return directory


def configure_allocator() -> bool:
    """Make glibc's malloc reuse large freed blocks instead of unmapping them; True if set.

    glibc serves blocks above its mmap threshold (at most 32 MiB; any block above 64 MiB from
    a non-main thread) with a fresh ``mmap`` and returns them with ``munmap``, so memory freed
    by one step is faulted in again, page by page, by the next. Three ``mallopt`` calls stop
    that: one arena (XLA allocates from its worker threads), no mmap-served blocks, and a
    1 GiB trim threshold. Peak memory is unchanged; memory is kept after the peak. Measured:
    page faults per second 52k -> 1.8k, train step 4-8% faster (docs/PERFORMANCE.md).
    A no-op (False) off glibc, when ``PCAM_JAX_DEFAULT_MALLOC=1``, or on a second call.
    """
    global _allocator_configured
    if _allocator_configured or os.environ.get(DEFAULT_MALLOC_ENV, "") not in ("", "0"):
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (present only in glibc)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 1 << 30)))
    _allocator_configured = ok
    return ok


def allocator_configured() -> bool:
    """Whether `configure_allocator` changed glibc's malloc settings in this process."""
    return _allocator_configured


def configure(extra_xla_flags: Sequence[str] = (), compilation_cache: bool = True) -> str:
    """`configure_xla_flags`, `configure_allocator`, then (optionally) `enable_compilation_cache`.

    Returns ``$XLA_FLAGS``.
    """
    flags = configure_xla_flags(extra_xla_flags)
    configure_allocator()
    if compilation_cache:
        enable_compilation_cache()
    return flags


def tensorflow():
    """The ``tensorflow`` module, with GPUs hidden from it: tf.data needs the CPU only.

    Imported lazily (2.5-4 s of start-up) by the data modules alone. Hiding fails once TF has
    initialised its devices (someone imported and used it first); then that choice stands.
    """
    import tensorflow as tf

    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass
    return tf
