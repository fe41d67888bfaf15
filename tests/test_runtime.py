"""pcam_jax.runtime: flag merging (the user's flags win)."""

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
    assert runtime.configure_xla_flags() == " ".join(["--foo=1", *runtime.PROJECT_XLA_FLAGS])
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
