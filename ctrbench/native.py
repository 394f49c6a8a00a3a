"""Native CPU kernels: a C++ source of this package built into a shared library on first use
and loaded with ctypes (no torch headers, no Python module: a build takes about a second).

``SOURCES`` names each kernel's source; its Python side (argument types, autograd, the check
that it may run) lives with the model code that uses it, e.g.
:mod:`ctrbench.models.fast.fused_attention`.

The library is built with ``$CXX`` (else ``c++``) and ``-O3 -march=native`` (``FLAGS``) into
``<folder>/<stem>-<key>/``: the folder is ``$CTRBENCH_NATIVE_CACHE``, else ``<cache
root>/native`` (``ctrbench.paths.cache_root``: ``$CTRBENCH_HOME`` or the user cache), and
``key`` hashes the source, its headers, the flags, the compiler's version and this CPU's model
and feature flags, so a cache shared by machines with other CPUs (a cluster's home directory)
never hands one of them code it cannot run. A build writes a temporary file and renames it
into place, so processes building at once never load half a library.

``CTRBENCH_NATIVE=0`` turns every native kernel off (the torch paths run; same functions, other
rounding). Without a compiler, or when a build fails, the torch paths run too and
:func:`status` says why; a run record carries that (``environment.native``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

OPT_OUT_VAR = "CTRBENCH_NATIVE"  # "0", "off", "false" or "no": no native kernel
CACHE_VAR = "CTRBENCH_NATIVE_CACHE"  # where built libraries are kept (default: the cache root's)
MARCH = "-march=native"  # code for the building CPU (left out where the compiler refuses it)
# -fno-math-errno: sqrt without a branch to set errno (no other effect on results), so that
# loops calling it vectorise
FLAGS = ("-O3", "-std=c++17", MARCH, "-fno-math-errno", "-shared", "-fPIC")
#: kernel name -> flags added to FLAGS for it: native_rows promises torch's sums bit for bit,
#: which a multiply-add fused into one rounding (GCC's default contraction) would break
EXTRA_FLAGS = {"native_rows": ("-ffp-contract=off",)}
#: kernel name -> its C++ source
_FAST = Path(__file__).resolve().parent / "models" / "fast"
SOURCES = {"fused_attention": _FAST / "fused_attention.cpp",
           "native_scan": _FAST / "native_scan.cpp",
           "native_dropout": _FAST / "native_dropout.cpp",
           "fused_gim": _FAST / "fused_gim.cpp",
           "deferred_adam": _FAST / "deferred_adam.cpp",
           "native_dice": _FAST / "native_dice.cpp",
           "native_rows": _FAST / "native_rows.cpp",
           "native_layer_norm": _FAST / "native_layer_norm.cpp",
           "fused_ibim": _FAST / "fused_ibim.cpp",
           "fused_fields": _FAST / "fused_fields.cpp",
           "fused_dien": _FAST / "fused_dien.cpp",
           "native_relu": _FAST / "native_relu.cpp",
           "native_outer": _FAST / "native_outer.cpp"}

#: stem -> the loaded library or the reason there is none (one attempt per process)
_loaded: dict[str, ctypes.CDLL | str] = {}
#: stem -> the flags its loaded library was built with
_built_with: dict[str, tuple[str, ...]] = {}


def disabled() -> bool:
    return os.environ.get(OPT_OUT_VAR, "").strip().lower() in {"0", "off", "false", "no"}


@functools.cache
def _cpu_identity() -> str:
    """This CPU's model and feature flags (Linux: /proc/cpuinfo), else the platform's words."""
    try:
        lines = Path("/proc/cpuinfo").read_text(errors="replace").splitlines()
    except OSError:
        return f"{platform.machine()} {platform.processor()}"
    wanted = ("model name", "flags", "Features", "CPU part")
    return "\n".join(sorted({line.strip() for line in lines if line.startswith(wanted)}))


@functools.cache
def _compiler_version(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    return result.stdout


def _build_with(stem: str, compiler: str, flags: tuple[str, ...]) -> Path:
    """The library of kernel ``stem`` built with ``flags`` (now, unless cached); raises
    RuntimeError."""
    from ctrbench.paths import cache_root

    source = SOURCES[stem]
    headers = sorted(source.parent.glob("*.h"))  # what the sources include
    digest = hashlib.sha256()
    for part in (source.read_bytes(), *(h.read_bytes() for h in headers), " ".join(flags).encode(),
                 _compiler_version(compiler).encode(), _cpu_identity().encode()):
        digest.update(part)
        digest.update(b"\0")
    root = Path(os.environ[CACHE_VAR]) if os.environ.get(CACHE_VAR) else cache_root() / "native"
    folder = root / f"{stem}-{digest.hexdigest()[:16]}"
    library = folder / f"{stem}.so"
    if library.is_file():
        return library
    folder.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(prefix=f".{stem}-", suffix=".so", dir=folder)
    os.close(fd)
    try:
        result = subprocess.run([compiler, *flags, "-o", partial, str(source)],
                                capture_output=True, text=True, timeout=300, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{compiler} failed on {source.name}: " + " | ".join(detail))
        os.replace(partial, library)
    finally:
        Path(partial).unlink(missing_ok=True)
    return library


def _build(stem: str, compiler: str) -> tuple[Path, tuple[str, ...]]:
    """The library of kernel ``stem`` and the flags that built it: ``FLAGS`` (+ its
    ``EXTRA_FLAGS``), else (a compiler that refuses ``-march=native``, e.g. some clang on arm64)
    those without it."""
    failures = []
    full = FLAGS + EXTRA_FLAGS.get(stem, ())
    for flags in (full, tuple(f for f in full if f != MARCH)):
        try:
            return _build_with(stem, compiler, flags), flags
        except RuntimeError as exc:
            failures.append(str(exc))
    raise RuntimeError(failures[0] if failures[0] == failures[-1] else "; ".join(failures))


def load(stem: str) -> ctypes.CDLL | None:
    """The library of kernel ``stem`` (``SOURCES``), or None (see :func:`status`)."""
    if disabled():
        return None
    if stem not in _loaded:
        compiler = os.environ.get("CXX") or "c++"
        if shutil.which(compiler) is None:
            _loaded[stem] = f"no C++ compiler ({compiler!r} not found)"
        else:
            try:
                library, _built_with[stem] = _build(stem, compiler)
                _loaded[stem] = ctypes.CDLL(str(library))
            except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
                _loaded[stem] = f"build failed: {exc}"
    found = _loaded[stem]
    return found if isinstance(found, ctypes.CDLL) else None


def load_typed(stem: str, signatures: dict[str, list[type]]) -> ctypes.CDLL | None:
    """:func:`load`, with the argument types of ``signatures``' functions set (once); each
    returns a C ``int`` status (see :func:`check`)."""
    library = load(stem)
    if library is not None and not getattr(library, "_ctrbench_typed", False):
        for name, arguments in signatures.items():
            function = getattr(library, name)
            function.argtypes, function.restype = arguments, ctypes.c_int
        library._ctrbench_typed = True
    return library


def check(code: int, what: str) -> None:
    """A kernel's status: 0, else RuntimeError naming ``what``."""
    if code != 0:
        raise RuntimeError(f"native {what} failed with code {code}")


def statuses() -> dict[str, str]:
    """:func:`status` of every kernel (for run records)."""
    return {stem: status(stem) for stem in SOURCES}


def status(stem: str) -> str:
    """"native" (built for this CPU and loaded; "native (without -march=native)" where the
    compiler refused that flag), "off (CTRBENCH_NATIVE=...)", or why it is unavailable."""
    if disabled():
        return f"off ({OPT_OUT_VAR}={os.environ[OPT_OUT_VAR]})"
    if load(stem) is None:
        return str(_loaded[stem])
    return "native" if MARCH in _built_with[stem] else f"native (without {MARCH})"
