"""Every run/ script refuses a bad flag that needs no model before
TensorFlow loads (a second instead of twenty): one line, status 1, no
traceback, no output folder, and `tensorflow` never imported.

Each case runs the script in a process of its own, forked from one Python
process for all the cases (tests/helpers/forked_scripts.py: one interpreter
start-up instead of 42), which says whether `tensorflow` is in
`sys.modules` at the script's exit.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

# Runs the cases in children forked from one process; see the helper.
PROBE = (REPO / 'tests' / 'helpers' / 'forked_scripts.py').read_text()
# Imported once before the forks, as the scripts import them first (none
# imports tensorflow: each case would say it was).
PREIMPORTED = ('absl.app', 'absl.flags', 'numpy', 'scae_tf.data')
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))

# (script, its flags, what the one line says); {tmp} is the case's folder,
# where no script may write: --out_dir, --logdir and --out point into
# {tmp}/out.
CASES = [
    ('attack', '--classifier=Foo', "Unknown classifier 'Foo'"),
    ('attack', '--attack=fgsm', "unknown attack='fgsm'"),
    ('attack', '--preset=fast', "Unknown attack preset 'fast'"),
    ('attack', '--attack=pgd_l2 --pgd_preset=pgd_linf',
     "Unknown PGD preset 'pgd_linf'"),
    ('attack', '--gradient=true', "unknown gradient='true'"),
    ('attack', '--quantize=16bit', "unknown quantize='16bit'"),
    ('attack', '--dataset=cifar10', "unknown dataset='cifar10'"),
    ('attack', '--split=val', "unknown split='val'"),
    ('attack', '--preprocess=crop', "unknown preprocess='crop'"),
    ('attack', '--optimizer=sgd', "unknown optimizer='sgd'"),
    ('attack', '--success=any', "unknown success='any'"),
    ('attack', '--num_samples=0', 'num_samples must be positive, got 0.'),
    ('attack', '--attack=pgd_l2 --eps=-1', 'eps must be a positive number'),
    ('train_defense', '--method=foo', "Unknown method 'foo'"),
    ('train_defense', '--method=at --preset=gpu', "Unknown preset 'gpu'"),
    ('train_defense', '--method=at --init=half', "Unknown init 'half'"),
    ('train_defense', '--method=at --lr_schedule=cosine',
     "Unknown lr_schedule 'cosine'"),
    ('train_defense', '--method=ad --ad_target=noisy',
     "unknown ad_target='noisy'"),
    ('train_defense', '--method=at --generator=fgsm',
     "Unknown generator 'fgsm'"),
    ('train_defense', '--method=at --dataset=cifar100',
     "Unknown dataset 'cifar100'"),
    ('train_defense', '--method=at --epochs=0',
     '--epochs must be positive, got 0.'),
    ('train_defense', '--method=at --k=-1', 'flag --k=-1'),
    ('train_defense', '--method=at --lambda_=2', 'flag --lambda_=2'),
    ('train_defense', '--method=at --save_every=0', 'flag --save_every=0'),
    ('train_teacher', '--dataset=cifar100', "Unknown dataset 'cifar100'"),
    ('train_teacher', '--config=imagenet', "Unknown config 'imagenet'"),
    ('train_teacher', '--recipe=gpu_fast', "Unknown recipe 'gpu_fast'"),
    ('train_teacher', '--strategy=tpu', "unknown strategy='tpu'"),
    ('train_teacher', '--preprocess=crop', "unknown preprocess='crop'"),
    ('train_teacher', '--batch_size=0', 'batch_size must be positive, got 0.'),
    ('evaluate', '--kmeans=l1', "unknown kmeans='l1'"),
    ('evaluate', '--dataset=cifar10', "unknown dataset='cifar10'"),
    ('evaluate', '--preprocess=crop', "unknown preprocess='crop'"),
    ('evaluate', '--config=imagenet', "Unknown config 'imagenet'"),
    ('evaluate', '--batch_size=0', 'batch_size must be positive, got 0.'),
    ('evaluate', '--seeds=1,a', 'seeds must be integers'),
    ('convert_checkpoint', '--config=imagenet', "Unknown config 'imagenet'"),
    ('export_pretrained', '--dataset=cifar10', "unknown dataset='cifar10'"),
    ('export_pretrained', '--eval_examples=0',
     'eval_examples must be positive, got 0.'),
    ('plot_training', '--smooth=0', 'flag --smooth=0'),
    ('plot_training', '--generator_blocks=0', 'flag --generator_blocks=0'),
    ('reproduce', '--scale=huge', 'flag --scale=huge'),
]
# What each script needs besides (a model that does not exist: it is never
# looked at).
REQUIRED = dict(
    attack='--checkpoint={tmp}/no_model --out_dir={tmp}/out',
    train_defense='--logdir={tmp}/out',
    train_teacher='--logdir={tmp}/out',
    evaluate='--checkpoint={tmp}/no_model --out={tmp}/out/model',
    convert_checkpoint='--tf1={tmp}/no_model --out={tmp}/out/model',
    export_pretrained='--source={tmp}/no_model --out={tmp}/out',
    plot_training='--runs={tmp}/no_run --out={tmp}/out/curves.png',
    reproduce='--workdir={tmp}/out')


def test_every_script_is_covered():
  scripts = {name[:-3] for name in os.listdir(REPO / 'run')
             if name.endswith('.py')}
  assert scripts <= set(REQUIRED) == {script for script, _, _ in CASES}


@pytest.fixture(scope='module')
def refusals(tmp_path_factory):
  """{case: (its folder, exit status, stdout, stderr, whether tensorflow
  was imported)}: every case, run in one go (PROBE)."""
  runs, folders = [], {}
  for script, flags, message in CASES:
    if not (REPO / 'run' / f'{script}.py').exists():
      continue
    tmp = tmp_path_factory.mktemp(script)
    argv = (REQUIRED[script] + ' ' + flags).format(tmp=tmp).split()
    runs.append([str(REPO / 'run' / f'{script}.py'), argv, str(tmp)])
    folders[script, flags, message] = tmp
  proc = subprocess.run([sys.executable, '-c', PROBE, *PREIMPORTED],
                        input=''.join(json.dumps(run) + '\n' for run in runs),
                        env=ENV, cwd=tmp_path_factory.getbasetemp(),
                        capture_output=True, text=True,
                        timeout=120 + 10 * len(runs))
  assert proc.returncode == 0, proc.stderr[-2000:]
  ready, *results = map(json.loads, proc.stdout.splitlines())
  assert ready == 'ready' and len(results) == len(runs), proc.stdout[:2000]
  return {case: (folder, *result)
          for (case, folder), result in zip(folders.items(), results)}


@pytest.mark.parametrize('script,flags,message', CASES)
def test_a_bad_flag_is_refused_before_tensorflow_loads(refusals, script,
                                                       flags, message):
  if not (REPO / 'run' / f'{script}.py').exists():
    pytest.skip(f'no run/{script}.py')
  tmp_path, returncode, _, stderr, tf_imported = refusals[
      script, flags, message]
  said = [line for line in stderr.splitlines()
          if line.startswith(('error:', 'FATAL Flags parsing error'))]
  assert returncode == 1, stderr[-2000:]
  assert len(said) == 1 and message in said[0], stderr[-2000:]
  assert 'Traceback' not in stderr
  assert tf_imported is False  # (None: the script ended before the probe)
  assert not (tmp_path / 'out').exists()


def test_the_names_the_scripts_check_are_the_libraries():
  """The TensorFlow-free lists name what the modules that use them hold."""
  # pylint: disable=g-import-not-at-top
  from attacks import evasion, names, optimizers, pgd
  from defenses import adversarial_batches, methods
  # pylint: enable=g-import-not-at-top
  assert tuple(evasion.PRESETS) == names.PRESETS
  assert tuple(pgd.PRESETS) == names.PGD_PRESETS
  assert tuple(optimizers.OPTIMIZERS) == names.OPTIMIZERS
  assert tuple(adversarial_batches.GENERATORS) == methods.GENERATORS
