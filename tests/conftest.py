"""Shared test helpers: where the original-code fixtures and the data live.

`SCAE_REFERENCE_DIR` (default `../shared/reference` beside the repo) holds the
outputs of the ORIGINAL TF1 SCAE; `SCAE_DATA_DIR` (default `../shared/data`)
the MNIST IDX files. Tests that need them skip, with the path in the reason,
when they are absent; `.ci/run` fails if they exist but were skipped.
"""

import os
import pathlib

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get(
    'SCAE_REFERENCE_DIR', REPO.parent / 'shared' / 'reference'))
DATA_DIR = pathlib.Path(os.environ.get(
    'SCAE_DATA_DIR', REPO.parent / 'shared' / 'data'))


def _missing(reason):
  """Skip, unless CI requires the fixtures (then a skip would hide a bug)."""
  if os.environ.get('SCAE_REQUIRE_FIXTURES') == '1':
    pytest.fail(reason + ' (SCAE_REQUIRE_FIXTURES=1)')
  pytest.skip(reason)


def reference_path(*parts):
  """Path inside the reference fixtures, or skip the test if absent."""
  path = REFERENCE_DIR.joinpath(*parts)
  is_ckpt_prefix = path.with_name(path.name + '.index').exists()
  if not (path.exists() or is_ckpt_prefix):
    _missing(f'original-code fixture {path} not found; set '
                'SCAE_REFERENCE_DIR to the shared/reference folder')
  return path


def data_path(*parts):
  path = DATA_DIR.joinpath(*parts)
  if not path.exists():
    _missing(f'data file {path} not found; set SCAE_DATA_DIR to a folder '
                'with the MNIST IDX files')
  return path


def write_tf1_checkpoint(prefix, tensors):
  """A name-based checkpoint of {name: array}, as a TF1 Saver writes it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  names = sorted(tensors)
  tf.raw_ops.SaveV2(prefix=str(prefix), tensor_names=names,
                    shape_and_slices=[''] * len(names),
                    tensors=[tf.constant(tensors[n]) for n in names])
  return str(prefix)


def random_tf1_weights(config, scope='', seed=0):
  """{scope + Sonnet 1 name: random array} for every variable of the SCAE of
  `config`: the model part of an original checkpoint."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  rng = np.random.RandomState(seed)
  return {scope + n: rng.randn(*v.shape).astype(np.float32)
          for n, v in checkpoints.tf1_variable_map(SCAE(config)).items()}


def with_rmsprop_slots(weights, global_step, ms, mom):
  """`weights` plus what a TF1 RMSProp run saves with them: `global_step` and
  the `/RMSProp` (ms) and `/RMSProp_1` (momentum) slots, filled with `ms` and
  `mom`; `dummy_vote` has no gradient, hence no slots."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  tensors = dict(weights, global_step=np.int64(global_step))
  for name, w in weights.items():
    if not name.endswith('dummy_vote'):
      tensors[name + '/RMSProp'] = np.full_like(w, ms)
      tensors[name + '/RMSProp_1'] = np.full_like(w, mom)
  return tensors


def unprivileged(command):
  """`command` run so that file permissions bind it: as root, without the
  capabilities that let root write anywhere (`setpriv`); skips the test if
  that is not possible."""
  if os.geteuid() != 0:
    return list(command)
  import shutil  # pylint: disable=g-import-not-at-top
  if shutil.which('setpriv') is None:
    pytest.skip('running as root without setpriv: permissions do not bind')
  return ['setpriv', '--bounding-set=-dac_override,-dac_read_search',
          '--'] + list(command)


_fixture_outcomes = {'passed': 0, 'skipped': 0}


def pytest_runtest_logreport(report):
  if 'fixtures' in report.keywords and report.when == 'call':
    if report.outcome in _fixture_outcomes:
      _fixture_outcomes[report.outcome] += 1
  if ('fixtures' in report.keywords and report.skipped
      and report.when == 'setup'):
    _fixture_outcomes['skipped'] += 1


def pytest_sessionfinish(session, exitstatus):
  """In CI (SCAE_REQUIRE_FIXTURES=1) fixture tests must have run and passed."""
  if os.environ.get('SCAE_REQUIRE_FIXTURES') != '1':
    return
  if _fixture_outcomes['skipped'] or not _fixture_outcomes['passed']:
    print(f'\nfixture tests: {_fixture_outcomes}; with '
          'SCAE_REQUIRE_FIXTURES=1 they must all run.')
    session.exitstatus = 1


def train_defense(*args, **kwargs):
  """`defenses.trainer.train_defense` with the run's settings and the call's
  hooks (display, log, a stream and evaluation data of the test's own) in
  one keyword list, as the tests write them."""
  # pylint: disable=g-import-not-at-top
  from defenses import trainer
  from defenses.run_spec import DefenceRun
  # pylint: enable=g-import-not-at-top
  hooks = {k: kwargs.pop(k) for k in ('progress', 'log', 'stream',
                                      'eval_data') if k in kwargs}
  return trainer.train_defense(DefenceRun(*args, **kwargs), **hooks)
