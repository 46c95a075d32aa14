"""Graceful stops: Ctrl-C (SIGINT) and a scheduler's SIGTERM stop a script
within seconds, keeping what is finished.

Python runs a signal handler only between two bytecodes of its main thread,
so a signal that arrives while the main thread waits for a long compiled
TensorFlow call (an outer iteration of an attack, a defence's training step
with its adversarial batch) waits for the whole call. Under
`handle_signals()`, which `scae_tf.cli.run` puts around every script:

* a watcher thread wakes on the signal (`signal.set_wakeup_fd`) and sets
  `stop_flag()`, a boolean `tf.Variable` that the compiled loops of the
  attacks read in their condition (`keep_going`): a running loop ends after
  its current iteration;
* the main thread raises `Interrupted` (a KeyboardInterrupt) as soon as the
  call returns, and `check()` raises it wherever the results of a call that
  a stop may have cut short would be used: they never are;
* inside `deferred()` (around a training step) the signal is only
  recorded: the caller rolls back a step cut short (`guard`) and decides
  where to stop with `check()`.

A loop that stops early does nothing else differently: every iteration is
the same ops on the same values, so what is kept is bit-identical to an
uninterrupted run. An XLA-compiled loop reads the flag when it starts (XLA
passes variables in as arguments), so it stops at its next call instead.
SIGTERM gets the same handling as SIGINT, and its exit status 143.

Without `handle_signals` (library use, tests in one process) nothing
changes: the flag stays False and Ctrl-C raises KeyboardInterrupt as usual.
This module imports TensorFlow only when a loop asks for the flag.
"""

import contextlib
import os
import signal
import threading
from typing import Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)
#: The message of the error that `guard` raises in a graph a stop cut short.
STOPPED = 'stopped by a signal (scae_tf.interrupts)'


class Interrupted(KeyboardInterrupt):
  """A stop asked for by SIGINT or SIGTERM; its message says what was kept
  (empty when nothing needed saying)."""


_received: Optional[int] = None  # the first signal since handle_signals
_installed = False
_deferred = 0
_flag = None  # the tf.Variable of stop_flag()


def stop_flag():
  """The boolean tf.Variable a signal sets (False otherwise), created on
  first use."""
  global _flag
  if _flag is None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.init_scope():
      _flag = tf.Variable(_received is not None, trainable=False,
                          name='stop_requested')
  return _flag


def keep_going(condition, after):
  """`condition` and no stop asked for: the condition of a compiled loop
  that a signal may end early (a bool tensor, the flag read at every
  iteration).

  `after`: a loop variable that the previous iteration's work computes, or
  the loop before it (e.g. the best result so far): the flag is read once
  it is there. A condition that depends on a counter alone would run ahead
  of the work (TensorFlow evaluates the conditions of up to 10 iterations,
  and of the loops after it, in advance) and read the flag too early.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.control_dependencies([after]):
    stopped = stop_flag().read_value()
  return tf.logical_and(condition, tf.logical_not(stopped))


def guard(*tensors):
  """`tensors`, passed on only if no stop was asked for once they are
  computed; otherwise the graph call fails with an InvalidArgumentError
  naming STOPPED, and nothing that depends on them runs (a training step
  whose adversarial batch a stop cut short applies no update)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with tf.control_dependencies(tensors):
    stopped = tf.debugging.Assert(tf.logical_not(stop_flag()), [STOPPED])
  with tf.control_dependencies([stopped]):
    return tuple(tf.identity(t) for t in tensors)


def installed() -> bool:
  """Whether `handle_signals` is in force."""
  return _installed


def requested() -> Optional[int]:
  """The signal that asked to stop (signal.SIGINT or SIGTERM), or None."""
  return _received


def check():
  """Raises Interrupted if a signal asked to stop."""
  if _received is not None:
    raise Interrupted()


def signal_name() -> str:
  return signal.Signals(_received or signal.SIGINT).name


def exit_status() -> int:
  """128 + the signal's number, as a shell reports a process it stopped."""
  return 128 + int(_received or signal.SIGINT)


@contextlib.contextmanager
def deferred():
  """Within: a signal only sets the flag and is recorded, for the caller to
  act on (`requested`, `check`); nothing is raised in the middle of the
  work."""
  global _deferred
  _deferred += 1
  try:
    yield
  finally:
    _deferred -= 1


def _handler(signum, frame):
  del frame
  global _received
  if _received is None:
    _received = signum
  if not _deferred:
    raise Interrupted()


def _watch(fd):
  """Sets the stop flag on each signal, while the main thread may be busy
  in a compiled call (it runs no Python handler until the call returns)."""
  global _received
  while True:
    try:
      data = os.read(fd, 64)
    except OSError:
      return
    if not data:
      return
    for signum in data:
      if signum not in SIGNALS:
        continue
      if _received is None:
        _received = signum
      if _flag is not None:
        _flag.assign(True)


@contextlib.contextmanager
def handle_signals():
  """SIGINT and SIGTERM stop the work within seconds (module doc). A signal
  the process ignores (a background job's SIGINT) stays ignored. Only in the
  main thread; nested calls do nothing more."""
  global _installed, _received
  if _installed or threading.current_thread() is not threading.main_thread():
    yield
    return
  read_fd, write_fd = os.pipe()
  os.set_blocking(write_fd, False)
  previous = {}
  for signum in SIGNALS:
    if signal.getsignal(signum) != signal.SIG_IGN:
      previous[signum] = signal.signal(signum, _handler)
  previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
  watcher = threading.Thread(target=_watch, args=(read_fd,), daemon=True,
                             name='scae_tf.interrupts')
  watcher.start()
  _installed, _received = True, None
  try:
    yield
  finally:
    signal.set_wakeup_fd(previous_fd)
    for signum, handler in previous.items():
      signal.signal(signum, handler)
    os.close(write_fd)
    watcher.join()
    os.close(read_fd)
    _installed, _received = False, None
    if _flag is not None:
      _flag.assign(False)
