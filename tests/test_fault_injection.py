"""Training killed with SIGKILL at chosen and at random points, in a save or
between saves, resumes from a whole checkpoint and ends bit-identical to an
uninterrupted run (tests/helpers/fault_run.py is the run).

Each killed process costs its start-up and the tracing of its step (about
25 s on a busy 2-core CPU), so all of it is `slow`; the default suite keeps
the SIGKILL tests of tests/test_training_loop.py and the in-process
simulations of a save cut short there.
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from helpers import fault_run
from scae_tf import checkpoints

SCRIPT = str(REPO / 'tests' / 'helpers' / 'fault_run.py')
STEPS = 300
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
    filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))


def _run(logdir, steps, kill=None):
  """(exit status, the JSON lines the run printed)."""
  proc = subprocess.run(
      [sys.executable, SCRIPT, str(logdir), str(steps)] + ([kill] if kill
                                                           else []),
      env=ENV, capture_output=True, text=True, timeout=600)
  assert proc.returncode in (0, -signal.SIGKILL), proc.stderr[-2000:]
  return proc.returncode, [json.loads(line)
                           for line in proc.stdout.splitlines()]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """{step: hash of the state after it} for STEPS steps, computed in this
  process (a run without a kill patches nothing). A shorter run passes
  through the same states."""
  reports = []
  fault_run.run(str(tmp_path_factory.mktemp('full')), STEPS, 'record:0',
                report=reports.append)
  hashes = {r['step']: r['hash'] for r in reports if r['event'] != 'end'}
  assert sorted(hashes) == list(range(STEPS + 1))
  end, = [r for r in reports if r['event'] == 'end']
  assert (end['step'], end['hash']) == (STEPS, hashes[STEPS])
  return hashes


def _kill_resume_and_finish(logdir, steps, kills, uninterrupted):
  """Runs `steps` steps in `logdir`, killed at each of `kills` in turn and
  resumed; returns the steps the processes started at."""
  resumed_at = []
  for kill in kills:
    status, reports = _run(logdir, steps, kill)
    assert status == -signal.SIGKILL, (kill, 'the run ended before the kill')
    # It started from the uninterrupted run's state at the step it resumed.
    start, = [r for r in reports if r['event'] == 'start']
    assert start['hash'] == uninterrupted[start['step']], (kill, start)
    resumed_at.append(start['step'])
    # The checkpoint in force reads back whole, and has its config.
    latest = tf.train.latest_checkpoint(str(logdir / 'ckpt'))
    if latest is not None:
      checkpoints.check_readable(latest)
      assert checkpoints.read_config(latest) is not None, (kill, latest)
  status, reports = _run(logdir, steps)
  assert status == 0
  start, end = reports
  assert start['hash'] == uninterrupted[start['step']]
  assert (end['step'], end['hash']) == (steps, uninterrupted[steps])
  logged = [json.loads(line) for line in open(logdir / 'log.jsonl')]
  assert [r['step'] for r in logged] == list(range(10, steps + 1, 10))
  return resumed_at + [start['step']]


@pytest.mark.slow
def test_killed_in_each_window_of_a_save_resumes_bit_identically(
    tmp_path, uninterrupted):
  # config:2 dies with the config of ckpt-4 written, not its checkpoint;
  # state:2 with the files of ckpt-6 written, the `checkpoint` file naming
  # ckpt-4; the next process resumes from ckpt-6, saves it again to name
  # it, and sweep:2 dies with ckpt-8 named, ckpt-2 not yet deleted.
  assert _kill_resume_and_finish(
      tmp_path, 20, ['config:2', 'state:2', 'sweep:2'],
      uninterrupted) == [0, 2, 6, 8]


KINDS = ('step', 'config', 'state', 'sweep', 'log', 'time')


def _random_kills(seed, count):
  """`count` kill points; the run progresses about 5 steps per point."""
  rng = np.random.default_rng(seed)
  kills = []
  for kind in rng.choice(KINDS, count):
    if kind == 'time':
      n = rng.integers(0, 400)  # milliseconds: a few steps and saves
    elif kind == 'step':
      n = rng.integers(1, 6)
    elif kind == 'log':
      n = 1  # a record every 10 steps
    else:
      n = rng.integers(1, 4)  # a save every 2 steps
    kills.append(f'{kind}:{n}')
  return kills


@pytest.mark.slow
def test_twenty_random_kills_resume_bit_identically(tmp_path, uninterrupted):
  kills = _random_kills(seed=2019, count=20)
  assert set(k.split(':')[0] for k in kills) == set(KINDS)
  resumed_at = _kill_resume_and_finish(tmp_path, STEPS, kills, uninterrupted)
  assert resumed_at == sorted(resumed_at)
