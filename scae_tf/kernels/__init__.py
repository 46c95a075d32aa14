"""Native CPU kernels, compiled on first use against the installed TensorFlow.

`resampler_op.cc` holds the fused bilinear resampler and its gradient (see its
header for why). It is built with the system C++ compiler the first time it is
needed, cached under a name derived from the source, the TensorFlow version
and the flags, and loaded with `tf.load_op_library`. Where no compiler is
found or the build fails, `resampler_ops()` returns None with a warning and
the resampler falls back to its pure-TF path (same semantics, slower
backward).

Environment:
  SCAE_TF_NATIVE=0        never build or load the kernels (pure-TF path).
  SCAE_TF_KERNEL_CACHE    cache directory (default ~/.cache/scae_tf/kernels,
                          or $XDG_CACHE_HOME/scae_tf/kernels).
  CXX                     the compiler (default: c++).
"""
import functools
import hashlib
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import warnings

import tensorflow as tf

__all__ = ['resampler_ops', 'native_status', 'build']

_SOURCE = pathlib.Path(__file__).with_name('resampler_op.cc')
# -ffp-contract=off: no fused multiply-adds, so that the arithmetic rounds
# exactly as the contrib kernel's (tested bit for bit against it).
_CXXFLAGS = ['-shared', '-fPIC', '-O3', '-ffp-contract=off',
             '-Wno-deprecated-declarations']


def _cache_dir():
  if os.environ.get('SCAE_TF_KERNEL_CACHE'):
    return pathlib.Path(os.environ['SCAE_TF_KERNEL_CACHE'])
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'scae_tf' / 'kernels'


def _command(source, output):
  cxx = os.environ.get('CXX', 'c++')
  return ([cxx] + _CXXFLAGS + tf.sysconfig.get_compile_flags() +
          [str(source), '-o', str(output)] + tf.sysconfig.get_link_flags())


def build(cache_dir=None):
  """Compiles resampler_op.cc unless cached; returns the library's path.

  Raises RuntimeError naming the command and the compiler's output if the
  build fails.
  """
  cache_dir = pathlib.Path(cache_dir or _cache_dir())
  source = _SOURCE.read_bytes()
  key = hashlib.sha256(b'\0'.join(
      [source, tf.__version__.encode()] +
      [a.encode() for a in _command('src', 'out')])).hexdigest()[:16]
  target = cache_dir / f'resampler_op_{key}.so'
  if target.exists():
    return target
  cxx = os.environ.get('CXX', 'c++')
  if shutil.which(cxx) is None:
    raise RuntimeError(f'no C++ compiler {cxx!r} on the PATH (set CXX)')
  cache_dir.mkdir(parents=True, exist_ok=True)
  print(f'scae_tf: compiling the native resampler kernel into {target} '
        '(once per TensorFlow version, ~15 s)', file=sys.stderr, flush=True)
  # Build beside the target and rename: concurrent builds cannot leave a
  # half-written library behind.
  fd, tmp = tempfile.mkstemp(suffix='.so', dir=cache_dir)
  os.close(fd)
  cmd = _command(_SOURCE, tmp)
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
      raise RuntimeError(f'building the native resampler failed:\n'
                         f'{" ".join(cmd)}\n{result.stderr[-4000:]}')
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


_status = {'state': 'not loaded'}


@functools.lru_cache(maxsize=None)
def resampler_ops():
  """The loaded op module (`scae_resample`, `scae_resample_grad`) or None."""
  if os.environ.get('SCAE_TF_NATIVE', '1') == '0':
    _status['state'] = 'disabled (SCAE_TF_NATIVE=0)'
    return None
  try:
    ops = tf.load_op_library(str(build()))
  except (RuntimeError, OSError, tf.errors.OpError) as e:
    _status['state'] = f'unavailable: {e}'
    warnings.warn('scae_tf: native resampler kernel unavailable, using the '
                  f'slower pure-TF path. Reason: {e}', RuntimeWarning)
    return None
  _status['state'] = 'native'
  return ops


def native_status():
  """'native', 'disabled (...)' or 'unavailable: reason' (loads if needed)."""
  resampler_ops()
  return _status['state']
