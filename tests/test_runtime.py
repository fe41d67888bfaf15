"""pcam_jax.runtime: flag merging (the user's flags win), the per-CPU flag table, the allocator."""

import warnings

from pcam_jax import runtime


def test_user_flags_win_and_project_flags_are_added():
    merged = runtime.merge_xla_flags("--xla_cpu_experimental_ynn_fusion_type=+individual_convolution --foo",
                                     ["--xla_cpu_experimental_ynn_fusion_type=-individual_convolution", "--bar=1"])
    assert merged == "--xla_cpu_experimental_ynn_fusion_type=+individual_convolution --foo --bar=1"


def test_configure_xla_flags_sets_environment(monkeypatch):
    warnings.simplefilter("ignore")  # JAX is already started in the test process: the warning is expected
    monkeypatch.setenv("XLA_FLAGS", "--foo=1")
    monkeypatch.delenv(runtime.NO_FLAGS_ENV, raising=False)
    assert runtime.configure_xla_flags() == " ".join(["--foo=1", *runtime.project_xla_flags()])
    monkeypatch.setenv("XLA_FLAGS", "--foo=1")
    monkeypatch.setenv(runtime.NO_FLAGS_ENV, "1")
    assert runtime.configure_xla_flags() == "--foo=1"


def test_configure_allocator_respects_opt_out(monkeypatch):
    monkeypatch.setattr(runtime, "_allocator_configured", False)
    monkeypatch.setenv(runtime.DEFAULT_MALLOC_ENV, "1")
    assert runtime.configure_allocator() is False
    assert runtime._allocator_configured is False


def test_configure_allocator_sets_glibc_once(monkeypatch):
    import ctypes
    import sys

    monkeypatch.setattr(runtime, "_allocator_configured", False)
    monkeypatch.delenv(runtime.DEFAULT_MALLOC_ENV, raising=False)
    try:
        ctypes.CDLL(None).gnu_get_libc_version
        glibc = sys.platform.startswith("linux")
    except (OSError, AttributeError):
        glibc = False
    assert runtime.configure_allocator() is glibc
    assert runtime.allocator_configured() is glibc
    assert runtime.configure_allocator() is False  # second call: nothing more to do


ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
processor\t: 1
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni
"""
ZEN2 = "vendor_id\t: AuthenticAMD\nflags\t\t: fpu sse2 avx avx2 fma\n"
SAPPHIRE_RAPIDS = ("vendor_id\t: GenuineIntel\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni "
                   "amx_bf16 amx_tile amx_int8\n")


def test_cpu_features_are_the_first_processors_flags_and_vendor():
    assert runtime.parse_cpu_features(ZEN4) == {"vendor:AuthenticAMD", "fpu", "sse2", "avx", "avx2", "fma",
                                                "avx512f", "avx512bw", "avx512_bf16", "avx512_vnni"}
    assert runtime.parse_cpu_features("") == frozenset()


def test_flag_table_per_cpu_kind():
    # The decision table of docs/PERFORMANCE.md, one row per CPU kind it was measured on:
    # AMD Zen 4 (AVX-512): XLA's YNNPACK convolutions; AMD without AVX-512: Eigen's
    # (YNN convolutions off); Intel Xeon (not measured with the new rule): unchanged, Eigen's;
    # a machine without /proc/cpuinfo (macOS, ARM): the unchanged default.
    expected = {ZEN4: (), ZEN2: (runtime.YNN_CONVOLUTIONS_OFF,), SAPPHIRE_RAPIDS: (runtime.YNN_CONVOLUTIONS_OFF,),
                "": (runtime.YNN_CONVOLUTIONS_OFF,)}
    for cpuinfo, flags in expected.items():
        assert runtime.project_xla_flags(runtime.parse_cpu_features(cpuinfo)) == flags, cpuinfo
    assert runtime.cpu_rule(runtime.parse_cpu_features(ZEN4)).name == "amd-avx512"
    assert runtime.CPU_RULES[-1].requires == ()  # every CPU matches some rule


def test_configure_uses_this_cpus_rule(monkeypatch):
    warnings.simplefilter("ignore")
    monkeypatch.delenv(runtime.NO_FLAGS_ENV, raising=False)
    monkeypatch.setattr(runtime, "cpu_features", lambda: runtime.parse_cpu_features(ZEN2))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert runtime.configure_xla_flags() == runtime.YNN_CONVOLUTIONS_OFF
    monkeypatch.setattr(runtime, "cpu_features", lambda: runtime.parse_cpu_features(ZEN4))
    monkeypatch.setenv("XLA_FLAGS", "")
    assert runtime.configure_xla_flags() == ""
