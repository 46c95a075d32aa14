"""tf.distribute: an N-replica step equals the 1-replica step on the same
global batch (loss, gradients, weights), with MirroredStrategy over two
logical CPUs and with MultiWorkerMirroredStrategy over two local processes.

Each strategy needs its own process set-up, so `tests/helpers/
distributed_run.py` runs as a subprocess and saves what is compared.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

SCRIPT = str(REPO / 'tests' / 'helpers' / 'distributed_run.py')


def _env(**extra):
  return dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3',
              PYTHONPATH=os.pathsep.join(filter(None, (
                  str(REPO), os.environ.get('PYTHONPATH')))), **extra)


@pytest.fixture(scope='module')
def mirrored(tmp_path_factory):
  path = tmp_path_factory.mktemp('dist') / 'mirrored.npz'
  proc = subprocess.run([sys.executable, SCRIPT, 'mirrored', str(path)],
                        env=_env(), capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return dict(np.load(path))


def _assert_same_training(single, other):
  np.testing.assert_allclose(other['loss'], single['loss'], rtol=1e-5)
  np.testing.assert_allclose(other['grad_global_norm'],
                             single['grad_global_norm'], rtol=1e-5)
  for key in ('first_gradients', 'weights'):
    scale = np.abs(single[key]).max()
    np.testing.assert_allclose(other[key], single[key], rtol=1e-4,
                               atol=1e-5 * scale, err_msg=key)


def _split(results, prefix):
  return {k[len(prefix) + 1:]: v for k, v in results.items()
          if k.startswith(prefix + '/')}


def test_mirrored_two_replicas_equal_one(mirrored):
  single, two = _split(mirrored, 'single'), _split(mirrored, 'mirrored')
  assert int(two['replicas']) == 2 and int(single['replicas']) == 1
  # The weights moved: the comparison is not between two initial states.
  assert not np.allclose(single['weights'][:1000], 0)
  _assert_same_training(single, two)


def _free_ports(n):
  socks = [socket.socket() for _ in range(n)]
  for s in socks:
    s.bind(('localhost', 0))
  ports = [s.getsockname()[1] for s in socks]
  for s in socks:
    s.close()
  return ports


# 41 s on the shared 2-core EPYC (two more processes, each loading
# TensorFlow and tracing the step). make_train_step runs one code path under
# any strategy other than the default (strategy.run, then the reduction of
# the replicas' gradients); the transport between processes is TensorFlow's.
# Covered by default: test_mirrored_two_replicas_equal_one (that path with 2
# replicas equals 1) and test_training_loop.py::
# test_teacher_under_a_strategy_and_its_errors (make_strategy's multiworker
# without TF_CONFIG).
@pytest.mark.slow
def test_multiworker_two_processes_equal_one(mirrored, tmp_path):
  workers = [f'localhost:{p}' for p in _free_ports(2)]
  procs = []
  for index in range(2):
    tf_config = json.dumps({'cluster': {'worker': workers},
                            'task': {'type': 'worker', 'index': index}})
    procs.append(subprocess.Popen(
        [sys.executable, SCRIPT, 'multiworker',
         str(tmp_path / f'worker{index}.npz')],
        env=_env(TF_CONFIG=tf_config), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True))
  for proc in procs:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
  single = _split(mirrored, 'single')
  for index in range(2):
    worker = _split(dict(np.load(tmp_path / f'worker{index}.npz')),
                    'multiworker')
    assert int(worker['replicas']) == 2
    _assert_same_training(single, worker)
