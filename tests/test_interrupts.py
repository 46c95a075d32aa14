"""Ctrl-C (SIGINT) and SIGTERM stop an attack or a defence within seconds,
in the middle of a compiled loop, keep what is finished, say so and give
the command that resumes; the resumed run ends as an uninterrupted one
(`scae_tf.interrupts`). tests/helpers/interrupt_run.py is the run.

A loop of a million iterations stands for an attack that would run for
hours: the run must stop long before the subprocess timeout. No test
times the stop itself (the CPU may be shared); benchmarks/stop_latency.py
does.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO
from conftest import data_path
from helpers.attack_files import assert_same_outputs
from helpers.attack_files import outputs
from helpers.attack_files import tiny_posk_checkpoint
from scae_tf import interrupts

SCRIPT = str(REPO / 'tests' / 'helpers' / 'interrupt_run.py')
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPATH=os.pathsep.join(
    filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))
FOREVER = 10 ** 6  # inner iterations: hours of attack


class Run:
  """The helper as a subprocess, its stdout and stderr read as they come,
  SIGINT as in a terminal's foreground job (not ignored)."""

  def __init__(self, *args):
    self.command = [sys.executable, SCRIPT, *map(str, args)]
    self.proc = subprocess.Popen(
        self.command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    self.out, self.err = [], []
    self.readers = [threading.Thread(target=self._read, args=(f, lines),
                                     daemon=True)
                    for f, lines in ((self.proc.stdout, self.out),
                                     (self.proc.stderr, self.err))]
    for reader in self.readers:
      reader.start()

  @staticmethod
  def _read(stream, lines):
    for line in stream:
      lines.append(line.rstrip('\n'))

  def wait_for(self, ready, timeout=600):
    deadline = time.time() + timeout
    while not ready():
      assert self.proc.poll() is None, '\n'.join(self.err[-30:])
      if time.time() > deadline:
        self.proc.kill()
        raise AssertionError('timed out:\n' + '\n'.join(self.err[-30:]))
      time.sleep(.02)

  def stop(self, signum, after=0.):
    """Sends `signum` `after` seconds on; returns the exit status (within
    the timeout: without the graceful stop, a run of FOREVER would not
    end)."""
    time.sleep(after)
    assert self.proc.poll() is None, '\n'.join(self.err[-30:])
    self.proc.send_signal(signum)
    return self._wait(300)

  def finish(self):
    status = self._wait(900)
    assert status == 0, '\n'.join(self.err[-30:])

  def _wait(self, timeout):
    try:
      status = self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()
      raise
    for reader in self.readers:
      reader.join(10)
    return status

  def said(self):
    """The lines the run printed to say how it stopped."""
    return [line for line in self.err
            if line.startswith(('interrupted', 'resume with:', 'Traceback'))]


def _python():
  """How `cli.resume_command` spells this Python."""
  from scae_tf import cli  # pylint: disable=g-import-not-at-top
  return cli.resume_command(['x'])[:-len(' x')]


def _resume_line(args):
  return 'resume with: ' + ' '.join([_python(), SCRIPT, *map(str, args)])


# --- attacks ------------------------------------------------------------------

@pytest.fixture
def tiny_checkpoint(tmp_path):
  data_path('mnist')
  return tiny_posk_checkpoint(tmp_path)


def _attack_args(out_dir, prefix, samples, inner):
  return ['attack', out_dir, prefix, str(data_path('mnist')), samples, inner]


def test_sigterm_stops_an_attack_inside_its_compiled_loop(tmp_path,
                                                          tiny_checkpoint):
  out = tmp_path / 'out'
  args = _attack_args(out, tiny_checkpoint, 2, FOREVER)
  run = Run(*args)
  run.wait_for(lambda: 'outer' in run.out)
  status = run.stop(signal.SIGTERM, after=1.)
  assert status == 143, '\n'.join(run.err[-30:])
  assert run.said() == [
      f'interrupted by SIGTERM: kept 0 of 1 batches (0 of 2 samples) in '
      f'{out / "batches"}; the batch in progress is lost',
      _resume_line(args)]
  assert os.listdir(out / 'batches') == []
  assert not (out / 'l2.npz').exists()


# 54 s on 2 idle cores (two attack processes); the SIGTERM test of an attack
# above checks the stop and the kept batches in the default suite.
@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_batches_and_the_resumed_attack_ends_as_an_uninterrupted_one(  # pylint: disable=line-too-long
    tmp_path, tiny_checkpoint):
  out = tmp_path / 'out'
  args = _attack_args(out, tiny_checkpoint, 6, 200)
  run = Run(*args)
  # The first outer iteration of the second batch is running.
  run.wait_for(lambda: (out / 'batches' / 'batch_00000.npz').exists()
               and run.out.count('outer') == 3)
  status = run.stop(signal.SIGINT)
  assert status == 130, '\n'.join(run.err[-30:])
  assert run.said() == [
      f'interrupted: kept 1 of 3 batches (2 of 6 samples) in '
      f'{out / "batches"}; the batch in progress is lost',
      _resume_line(args)]
  assert os.listdir(out / 'batches') == ['batch_00000.npz']
  # The same command resumes and ends with the files of a run never stopped.
  Run(*args).finish()
  whole = tmp_path / 'whole'
  Run(*_attack_args(whole, tiny_checkpoint, 6, 200)).finish()
  assert_same_outputs(out, outputs(whole))


# --- defences -----------------------------------------------------------------

def _checkpoint_tensors(prefix):
  """Every saved value but TF's count of saves."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith('save_counter')}


def _interrupt_the_adversarial_step(logdir, inner, signum, after=0.):
  """Starts the tiny AT run, signals it during its second step (the
  adversarial one; the first is saved by then); returns (the run, its
  exit status)."""
  run = Run('defence', logdir, inner)
  run.wait_for(lambda: tf.train.latest_checkpoint(str(logdir / 'ckpt'))
               is not None)
  return run, run.stop(signum, after)


# 24 s on the shared 2-core EPYC (a process tracing the adversarial step);
# the slow test below signals the same run and also resumes it. Covered by
# default: test_sigterm_stops_an_attack_inside_its_compiled_loop (the
# attack's compiled loop, which the step's in_graph runs, stops on a
# signal), test_guard_fails_the_graph_call_once_a_stop_is_asked (the step's
# guard on the attack's output) and test_teacher.py::
# test_ctrl_c_saves_the_step_and_says_so_in_one_line (train_loop saves the
# step and the script says so in one line, status 130).
@pytest.mark.slow
def test_ctrl_c_stops_a_defence_inside_its_adversarial_batch(tmp_path):
  logdir = tmp_path / 'run'
  run, status = _interrupt_the_adversarial_step(logdir, FOREVER,
                                                signal.SIGINT, after=1.)
  assert status == 130, '\n'.join(run.err[-30:])
  newest = tf.train.latest_checkpoint(str(logdir / 'ckpt'))
  assert run.said() == [
      f'interrupted: at step 1, saved in {newest}.',
      _resume_line(['defence', logdir, FOREVER])]
  assert newest.endswith('ckpt-1')


@pytest.mark.slow  # 3 processes, each tracing the step with its attack
def test_sigterm_in_an_adversarial_batch_resumes_bit_identical(tmp_path):
  """The step a signal cut short (its generator draws, its counter, its
  step count: `training.loop._run_step`) is undone: the run saved at the
  step before resumes to the weights, slots, counter and generator of a
  run never stopped."""
  logdir = tmp_path / 'run'
  run, status = _interrupt_the_adversarial_step(logdir, 300, signal.SIGTERM)
  assert status == 143, '\n'.join(run.err[-30:])
  newest = tf.train.latest_checkpoint(str(logdir / 'ckpt'))
  assert run.said() == [
      f'interrupted by SIGTERM: at step 1, saved in {newest}.',
      _resume_line(['defence', logdir, 300])]
  assert newest.endswith('ckpt-1')
  Run('defence', logdir, 300).finish()
  Run('defence', tmp_path / 'whole', 300).finish()
  got = _checkpoint_tensors(str(logdir / 'ckpt' / 'ckpt-2'))
  want = _checkpoint_tensors(str(tmp_path / 'whole' / 'ckpt' / 'ckpt-2'))
  assert sorted(got) == sorted(want)
  assert any(n.startswith('adversarial/generator') for n in want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# --- the mechanism, in this process --------------------------------------------

def test_without_the_handlers_nothing_changes():
  assert not interrupts.installed() and interrupts.requested() is None
  interrupts.check()  # no signal: nothing raised
  assert not interrupts.stop_flag().numpy()


def test_a_signal_ends_a_compiled_loop_and_raises_after_it():
  """SIGTERM while the main thread runs a compiled loop of 10^8 steps
  (minutes): the watcher thread sets the flag, the loop ends early,
  Interrupted follows. (SIGTERM: a background pytest may ignore SIGINT, as
  a shell's `&` does.)"""
  reached = tf.Variable(0)

  @tf.function
  def count(n):
    i = tf.constant(0)
    while interrupts.keep_going(i < n, after=i):
      i += 1
    reached.assign(i)

  timer = threading.Timer(1., os.kill, (os.getpid(), signal.SIGTERM))
  with interrupts.handle_signals():
    count.get_concrete_function(tf.TensorSpec([], tf.int32))
    timer.start()
    with pytest.raises(interrupts.Interrupted):
      count(10 ** 8)
    assert 0 < int(reached.numpy()) < 10 ** 8
    assert interrupts.requested() == signal.SIGTERM
    assert interrupts.exit_status() == 143
  assert not interrupts.installed() and interrupts.requested() is None
  assert not interrupts.stop_flag().numpy()
  count(1000)  # the handlers gone, the loop runs whole
  assert int(reached.numpy()) == 1000


def test_guard_fails_the_graph_call_once_a_stop_is_asked():
  @tf.function
  def guarded(x):
    return interrupts.guard(x * 2.)[0]

  assert float(guarded(tf.constant(1.))) == 2.
  with interrupts.handle_signals(), interrupts.deferred():
    os.kill(os.getpid(), signal.SIGTERM)  # recorded, not raised
    deadline = time.time() + 10
    while not interrupts.stop_flag().numpy() and time.time() < deadline:
      time.sleep(.01)
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=re.escape(interrupts.STOPPED)):
      guarded(tf.constant(1.))
    assert interrupts.requested() == signal.SIGTERM
    with pytest.raises(interrupts.Interrupted):
      interrupts.check()
