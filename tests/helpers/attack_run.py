"""An attack run of `attacks.pipeline.attack_checkpoint` that kills itself
with SIGKILL at a chosen event. Run as a script:

  python attack_run.py CHECKPOINT DATA_DIR OUT_DIR KILL_AT

The events, in order: three per file the run writes (`scae_tf.files`
writes all of them): `<file> open` (the temporary file exists, empty),
`<file> written` (its content is on disk, not yet renamed) and `<file>
renamed`; and `outer` after every outer iteration of the attack, between two
saves. KILL_AT is an event's index in this process, or its name (its first
occurrence); -1 never kills. A run that finishes prints its events, one a
line; a killed one, `killed at <event>`. Re-running resumes from OUT_DIR:
the test checks that any sequence of kills and resumptions ends with the
files of an uninterrupted run.
"""

import contextlib
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
from attacks import evasion
from attacks import pipeline
from attacks.run_spec import AttackRun
from scae_tf import files
# pylint: enable=g-import-not-at-top

SETTINGS = dict(dataset='mnist', num_samples=6, batch_size=2, seed=3,
                overrides=dict(outer_iterations=3, inner_iterations=2),
                # The sanity checks' PGD run (attacks.sanity), kept short.
                pgd_overrides=dict(steps=2))


class Events:
  """Counts the events; SIGKILLs this process at the chosen one."""

  def __init__(self, kill_at: str):
    self.kill_at = kill_at
    self.seen = []

  def __call__(self, name: str):
    if self.kill_at in (str(len(self.seen)), name):
      print(f'killed at {name}', flush=True)
      os.kill(os.getpid(), signal.SIGKILL)
    self.seen.append(name)


def instrument(event, out_dir):
  """Routes the run's writes and the attack's iterations through `event`."""
  atomic_open = files.atomic_open

  @contextlib.contextmanager
  def killable_open(path, mode='w'):
    name = os.path.relpath(path, out_dir)
    with atomic_open(path, mode) as f:
      event(f'{name} open')
      yield f
      f.flush()
      event(f'{name} written')
    event(f'{name} renamed')

  attack = evasion.CapsuleAttack.__call__

  def attack_with_events(self, images, labels, seed=None, callback=None):
    def each(i, n):
      callback(i, n)
      event('outer')
    return attack(self, images, labels, seed=seed, callback=each)

  files.atomic_open = killable_open
  evasion.CapsuleAttack.__call__ = attack_with_events


def main(checkpoint, data_dir, out_dir, kill_at):
  event = Events(kill_at)
  instrument(event, out_dir)
  pipeline.attack_checkpoint(
      AttackRun(checkpoint, 'PosK', data_dir=data_dir, out_dir=out_dir,
                **SETTINGS), progress=False)
  print('\n'.join(event.seen))


if __name__ == '__main__':
  main(*sys.argv[1:])
