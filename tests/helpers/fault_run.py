"""A tiny resumable training run that kills itself (SIGKILL) at a chosen
point, for tests/test_fault_injection.py. Run as a script:

  python fault_run.py LOGDIR STEPS [KIND:N]

Re-running resumes from LOGDIR. KIND:N is where this process dies, at the
N-th time it gets there:

  step    just after an optimiser step, before its log record and its save;
  config  in a save: its config is written, the checkpoint is not;
  state   in a save: TF wrote the checkpoint files, and the `checkpoint`
          file does not name them yet;
  sweep   in a save: the `checkpoint` file names the new checkpoint, and
          the ones it retires are not deleted yet;
  log     in the middle of a log line (as a full disk or a crash leaves it);
  time    N milliseconds after this process's first step: anywhere.

(`record:0` kills nothing and reports every step.)

Prints JSON lines: `{"event": "start", "step": s, "hash": h}` before the
first step of this process (the state it resumed from: weights, RMSProp
slots, step), `{"event": "end", ...}` when the run is complete, and with
KIND `record`, `{"event": "step", ...}` after every step. `run` without a
kill patches nothing, and may run in the test's process.
"""

import collections
import hashlib
import json
import os
import signal
import sys
import threading

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

from tensorflow.python.checkpoint import checkpoint_management  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import

from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
from scae_tf import training  # pylint: disable=g-import-not-at-top

# Run as a script or imported by the test: its sibling either way.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_run  # pylint: disable=g-import-not-at-top,wrong-import-position

SAVE_EVERY = 2


def _die():
  os.kill(os.getpid(), signal.SIGKILL)


def _state_hash(variables):
  digest = hashlib.sha256()
  for v in variables:
    digest.update(v.numpy().tobytes())
  return digest.hexdigest()


def _print(report):
  print(json.dumps(report), flush=True)


def run(logdir, steps, kill=None, report=_print):
  """Trains (or resumes) in `logdir`; `report` gets the dicts printed."""
  kind, n = kill.split(':') if kill else (None, 0)
  n, seen = int(n), collections.Counter()

  def tell(event):
    report(dict(event=event, step=int(opt.step.numpy()),
                hash=_state_hash(variables)))

  def reached(point):
    seen[point] += 1
    if point == kind and seen[point] == n:
      _die()

  config, recipe, model, opt, stream = tiny_run.build()
  variables = list(model.variables) + list(opt.variables)
  compiled = training.make_train_step(model, opt, seed=0)

  def step(images, labels):
    first = not seen['first']
    if first:
      seen['first'] += 1
      tell('start')
    metrics = compiled(images, labels)
    if first and kind == 'time':
      # After the first step, which spends seconds tracing the step.
      threading.Timer(n / 1000, _die).start()
    if kind == 'record':
      tell('step')
    reached('step')
    return metrics

  save_config = checkpoints.save_config
  in_save = []

  def save_config_then(config, prefix):
    save_config(config, prefix)
    in_save.append(prefix)
    reached('config')

  update_state = checkpoint_management.update_checkpoint_state_internal

  def update_state_between(*args, **kwargs):
    # A save writes the `checkpoint` file twice: naming the new checkpoint,
    # then again once the retired ones are deleted.
    first = bool(in_save)
    in_save.clear()
    if first:
      reached('state')
    update_state(*args, **kwargs)
    if first:
      reached('sweep')

  log_write = training.JsonlLog.write

  def torn_write(self, record):
    if kind == 'log' and seen['log'] + 1 == n:
      with open(self.path, 'a') as f:
        f.write(json.dumps(record)[:12])
    reached('log')
    log_write(self, record)

  if kind not in (None, 'record'):
    checkpoints.save_config = save_config_then
    checkpoint_management.update_checkpoint_state_internal = (
        update_state_between)
    training.JsonlLog.write = torn_write
  training.prepare_logdir(logdir, training.run_settings(config, recipe))
  training.train_loop(model, opt, stream, logdir, steps, train_step=step,
                      save_every=SAVE_EVERY, progress=False,
                      log=lambda msg: None)
  tell('end')


if __name__ == '__main__':
  run(sys.argv[1], int(sys.argv[2]), *sys.argv[3:])
