"""Compiled CPU kernels: built on first use with the machine's C++ compiler, cached, optional.

XLA:CPU cannot fuse attention's matmul-softmax-matmul chain; ``csrc/causal_attention.cc`` does,
as an XLA FFI custom call. It is compiled for the host CPU (``-march=native``) the first time it is
needed, into ``$TOTO_JAX_KERNEL_CACHE`` (default ``~/.cache/toto_jax``) under a name that hashes
the source, the flags, the compiler, the JAX version and the CPU, so a shared home directory
across different machines keeps one build per CPU. Nothing is downloaded: the FFI headers ship
with jaxlib. Without a compiler (or with ``TOTO_JAX_NATIVE=0``) callers fall back to pure-XLA
code and one warning says why.
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
import warnings
from pathlib import Path

import jax

SOURCE = Path(__file__).parent / 'csrc' / 'causal_attention.cc'
FLAGS = ('-O3', '-march=native', '-std=c++17', '-shared', '-fPIC', '-pthread')
FORWARD_TARGET = 'toto_causal_attention_fwd'
BACKWARD_TARGET = 'toto_causal_attention_bwd'


class NativeUnavailable(RuntimeError):
  """The compiled kernels cannot be used here; the message says why."""


def cache_dir() -> Path:
  default = Path(os.environ.get('XDG_CACHE_HOME', Path.home() / '.cache')) / 'toto_jax'
  return Path(os.environ.get('TOTO_JAX_KERNEL_CACHE', default))


def _cpu_signature() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(('flags', 'Features')):
          return line
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _compiler() -> str:
  cxx = os.environ.get('CXX') or shutil.which('c++') or shutil.which('g++')
  if not cxx:
    raise NativeUnavailable('no C++ compiler found (set CXX or install g++)')
  return cxx


def _build(source: Path, out: Path, cxx: str) -> None:
  """Compiles ``source`` to ``out`` atomically: a half-written library is never loaded."""
  out.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=out.parent)
  os.close(fd)
  cmd = [cxx, *FLAGS, '-isystem', jax.ffi.include_dir(), str(source), '-o', tmp]
  try:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
      raise NativeUnavailable(f'compiling {source.name} failed ({" ".join(cmd)}):\n'
                              f'{done.stderr[-2000:]}')
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _build_and_register() -> None:
  if os.environ.get('TOTO_JAX_NATIVE', '1') == '0':
    raise NativeUnavailable('disabled by TOTO_JAX_NATIVE=0')
  cxx = _compiler()
  try:
    version = subprocess.run([cxx, '--version'], capture_output=True, text=True).stdout
  except OSError as e:
    raise NativeUnavailable(f'cannot run the C++ compiler {cxx}: {e}') from e
  key = hashlib.sha256('\0'.join(
      [SOURCE.read_text(), ' '.join(FLAGS), version, jax.__version__, _cpu_signature()]).encode())
  path = cache_dir() / f'causal_attention-{key.hexdigest()[:16]}.so'
  if not path.exists():
    _build(SOURCE, path, cxx)
  _register(path)


_registered: list[ctypes.CDLL] = []  # XLA keeps the first handler for the process's lifetime


def _register(path: Path) -> None:
  if _registered:
    return
  try:
    lib = ctypes.cdll.LoadLibrary(str(path))
  except OSError as e:
    raise NativeUnavailable(f'cannot load {path}: {e}') from e
  jax.ffi.register_ffi_target(FORWARD_TARGET, jax.ffi.pycapsule(lib.TotoCausalAttentionForward),
                              platform='cpu')
  jax.ffi.register_ffi_target(BACKWARD_TARGET, jax.ffi.pycapsule(lib.TotoCausalAttentionBackward),
                              platform='cpu')
  _registered.append(lib)


@functools.lru_cache(maxsize=None)
def _load_causal_attention() -> str | None:
  """None once the kernel is registered with XLA, else why not (remembered: a failing compile is
  not retried on every trace)."""
  try:
    _build_and_register()
    return None
  except NativeUnavailable as e:
    return str(e)


def causal_attention_available() -> bool:
  """Whether the fused CPU attention kernel is built (building it now if needed). Warns once
  with the reason when it cannot be."""
  reason = _load_causal_attention()
  if reason is not None:
    _warn_once(reason)
  return reason is None


def require_causal_attention() -> None:
  """Builds and registers the kernel, or raises :class:`NativeUnavailable` saying why."""
  reason = _load_causal_attention()
  if reason is not None:
    raise NativeUnavailable(reason)


@functools.lru_cache(maxsize=None)
def _warn_once(reason: str) -> None:
  warnings.warn(f'fused CPU attention unavailable, using the XLA blockwise kernel: {reason}',
                RuntimeWarning, stacklevel=3)
