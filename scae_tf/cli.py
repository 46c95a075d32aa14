"""Helpers shared by the `run/` entry points and the library functions
behind them: errors, logging, argument checks.

This module imports nothing heavy, so that a script's `--help` and its flag
errors answer before TensorFlow loads.
"""

import logging
import os
import re
import shlex
import shutil
import signal
import sys
from typing import Callable, Sequence

from absl import flags
from absl import logging as absl_logging

from scae_tf import interrupts


class UsageError(ValueError):
  """A bad flag value or combination of flags."""


class TrainingFailed(RuntimeError):
  """Training stopped on a state it must not save (e.g. a NaN); the message
  names the last good checkpoint. Scripts exit with TRAINING_FAILED."""


# What a script reports as one `error: ...` line. CheckpointMismatchError
# (scae_tf.checkpoints) is a ValueError; naming it here would import
# TensorFlow. OSError covers FileNotFoundError and unreadable data files.
EXPECTED_ERRORS = (ValueError, OSError)

# The exit status of a script stopped by Ctrl-C: 128 + SIGINT (by SIGTERM:
# 143, `interrupts.exit_status`).
INTERRUPTED = 130
# The exit status of a training that failed (TrainingFailed).
TRAINING_FAILED = 2


def log(msg: str):
  """Progress and warnings go to stderr, so stdout stays the result."""
  print(msg, file=sys.stderr, flush=True)


def error(msg) -> int:
  """Prints `error: msg` on stderr; returns the exit status 1."""
  print(f'error: {msg}', file=sys.stderr)
  return 1


def quiet_tensorflow():
  """Silences TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes)
  and its Python INFO lines (e.g. one per checkpoint written), which absl's
  handler prints under `app.run`.

  Only effective before TensorFlow is imported. An explicit
  TF_CPP_MIN_LOG_LEVEL (for the C++ log) or --verbosity (for the Python one)
  of the user wins.
  """
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if not flags.FLAGS['verbosity'].present:
    # `app.run` set absl's level from --verbosity: INFO unless given.
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger('tensorflow').setLevel(logging.WARNING)


def extra_args_error(argv) -> bool:
  """Prints an error and returns True when absl left positional arguments:
  a mistyped flag (e.g. `--dataset mnist` without `=`) lands there, and
  silently ignoring it would run with the default instead."""
  if len(argv) > 1:
    error(f'unexpected arguments {argv[1:]}')
    return True
  return False


def run(argv: Sequence[str], call: Callable[[], object],
        resumable: bool = False) -> int:
  """The body of a script's `main`: runs `call()` and maps its outcome to an
  exit status.

  Expected errors (a bad flag, a missing file, a checkpoint that does not fit)
  become one `error: ...` line on stderr and status 1, without a traceback;
  a failed training (TrainingFailed) one line and status 2;
  Ctrl-C or SIGTERM stops the work within seconds (`scae_tf.interrupts`),
  then one `interrupted` line says what was saved (when the interrupted work
  says), a `resume with:` line gives the command that resumes a
  `resumable` script, and the status is 130 (SIGINT) or 143 (SIGTERM), as
  a shell reports them;
  anything else is a bug and propagates. `call` returns None or an int status.
  """
  if extra_args_error(argv):
    return 1
  quiet_tensorflow()
  with interrupts.handle_signals():
    try:
      status = call()
    except EXPECTED_ERRORS as e:
      return error(e)
    except TrainingFailed as e:
      error(e)
      return TRAINING_FAILED
    except KeyboardInterrupt as e:
      by = ('' if interrupts.requested() in (None, signal.SIGINT)
            else f' by {interrupts.signal_name()}')
      print(f'interrupted{by}{f": {e}" if str(e) else ""}', file=sys.stderr)
      if resumable:
        print(f'resume with: {resume_command()}', file=sys.stderr)
      return interrupts.exit_status()
  return 0 if status is None else int(status)


def resume_command(argv: Sequence[str] = None) -> str:
  """The command that resumes this script's run: the script and its flags as
  given, without --overwrite (which would start the run over)."""
  argv = sys.argv if argv is None else argv
  kept = [a for a in argv[1:] if not re.fullmatch(r'--?overwrite(=.*)?', a)]
  found = shutil.which('python')
  python = ('python' if found and os.path.realpath(found)
            == os.path.realpath(sys.executable) else sys.executable)
  return shlex.join([python, argv[0], *kept])


def check_choice(name: str, value, choices: Sequence):
  """UsageError unless `value` is one of `choices`.

  The library functions behind the scripts check their arguments with it
  before any work; their arguments bear the flags' names.
  """
  if value not in choices:
    raise UsageError(f'unknown {name}={value!r}; expected one of '
                     f'{", ".join(map(str, choices))}.')


def check_positive(name: str, value, optional: bool = False):
  """UsageError unless `value` >= 1 (or None, when `optional`)."""
  if value is None and optional:
    return
  if value is None or value < 1:
    raise UsageError(f'{name} must be positive, got {value}.')


def define_run_flags(default_logdir: str):
  """The flags every training script shares: the run folder and its
  checkpoints, the seed, the data and the display."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_string('logdir', None,
                      f'Run directory (default: {default_logdir}).')
  flags.DEFINE_integer('seed', 0, 'Seed of the init, the data order and '
                       'the training randomness.')
  flags.DEFINE_string('data_dir', None, 'Folder with the IDX files.')
  flags.DEFINE_integer('save_every', 1000, 'Checkpoint every N steps (and '
                       'at every epoch end).', lower_bound=1)
  flags.DEFINE_bool('overwrite', False, 'Restart the run in --logdir: delete '
                    'what a run wrote there, whatever its settings.')
  flags.DEFINE_bool('progress', True, 'Show progress bars.')
