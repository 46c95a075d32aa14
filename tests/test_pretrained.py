"""pretrained/: exporting a run as weights, config, k-means and model card,
and the shipped models working straight from a clone."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import loading
from scae_tf import pretrained
from scae_tf import recipes
from scae_tf import training
from scae_tf.capsules.model import SCAE

SMALL = configs.tiny_config(canvas_size=40)
QUICK = dict(outer_iterations=1, inner_iterations=2)


def _run_folder(root, step=40):
  """A run folder as run/train_teacher.py leaves it, with a cpu-recipe
  run.json (a deviation) and one checkpoint at `step`."""
  tf.random.set_seed(1)
  model = SCAE(SMALL)
  folder = root / 'run'
  (folder / 'ckpt').mkdir(parents=True)
  checkpoints.save_tf2_checkpoint(model, str(folder / 'ckpt' / f'ckpt-{step}'))
  tf.compat.v1.train.update_checkpoint_state(str(folder / 'ckpt'),
                                             f'ckpt-{step}')
  recipe = recipes.get_recipe('cpu').replace(batch_size=4)
  settings = training.run_settings(SMALL, recipe, dataset='mnist', seed=0,
                                   init_from=None, replicas=1)
  (folder / 'run.json').write_text(json.dumps(settings))
  return folder, model


def test_export_writes_weights_kmeans_and_a_card_and_refuses_to_overwrite(
    tmp_path):
  from conftest import DATA_DIR, data_path  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  source, model = _run_folder(tmp_path)
  out = tmp_path / 'pretrained' / 'tiny'
  card = pretrained.export(str(source), str(out), 'mnist',
                           command='python run/train_teacher.py --recipe=cpu',
                           data_dir=str(DATA_DIR), max_examples=200,
                           progress=False, log=lambda msg: None)
  names = sorted(os.listdir(out))
  assert names == sorted([
      'MODEL_CARD.md', 'checkpoint', 'model.config.json',
      'model.data-00000-of-00001', 'model.index', 'model.eval.json',
      'model.kmeans_posterior_cosine.npz', 'model.kmeans_prior_cosine.npz'])
  # Weights only: no optimiser slots, nothing but the model.
  keys = [n for n, _ in tf.train.list_variables(str(out / 'model'))]
  assert not [n for n in keys if n.startswith('optimizer')]
  loaded = loading.load_model(str(out))
  assert loaded.config.architecture() == SMALL.architecture()
  for a, b in zip(loaded.model.variables, model.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert set(loaded.kmeans) == {'prior_cosine', 'posterior_cosine'}
  text = open(card).read()
  report = json.load(open(out / 'model.eval.json'))
  test_acc = report['results']['kmeans']['cosine']['prior']['test']
  assert f'{100 * test_acc:.2f} %' in text
  assert 'DEVIATION' not in text  # Said once, under its heading:
  assert 'lr 3e-4 instead of 3e-5' in text
  # 80 epochs of 200 // 4 steps planned by the cpu recipe, 40 done.
  assert ('stopped at step 40 of the 4000 the run planned (epoch 0.8 of 80)'
          in text)
  assert 'python run/train_teacher.py --recipe=cpu' in text
  assert 'on the first 200 examples of each split only' in text
  # Written under a temporary name, renamed: nothing else beside it.
  assert os.listdir(out.parent) == ['tiny']
  assert report['checkpoint'] == 'model'
  with pytest.raises(FileExistsError, match='not empty'):
    pretrained.export(str(source), str(out), 'mnist', data_dir=str(DATA_DIR),
                      max_examples=200, progress=False, log=lambda msg: None)
  # --overwrite: the new export replaces the old one whole, at the end.
  (out / 'notes.txt').write_text('of the old export')
  assert pretrained.export(
      str(source), str(out), 'mnist', data_dir=str(DATA_DIR), max_examples=100,
      overwrite=True, progress=False, log=lambda msg: None) == card
  assert sorted(os.listdir(out)) == names
  assert os.listdir(out.parent) == ['tiny']
  assert 'on the first 100 examples' in open(card).read()


def test_a_card_lists_the_deviations_of_its_teachers_card(tmp_path):
  """A defence's card repeats its teacher's deviations, read from the
  teacher's card; none without a card or under '- none'."""
  teacher = tmp_path / 'teacher'
  teacher.mkdir()
  (teacher / 'MODEL_CARD.md').write_text(
      '# t\n\n## Provenance\n\n- seed: `0`\n\n'
      '## Deviations from the paper\n\n- lr 3e-4\n- stopped early\n\n'
      '## Accuracy\n\n- not a deviation\n')
  assert pretrained.card_deviations(str(teacher)) == ['lr 3e-4',
                                                      'stopped early']
  assert pretrained.card_deviations(str(tmp_path / 'missing')) == []
  assert pretrained.card_deviations(None) == []
  (teacher / 'MODEL_CARD.md').write_text(
      '## Deviations from the paper\n\n- none\n')
  assert pretrained.card_deviations(str(teacher)) == []


def test_an_exported_folder_is_attacked_with_its_own_kmeans(tmp_path):
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  from attacks.run_spec import AttackRun  # pylint: disable=g-import-not-at-top
  from conftest import DATA_DIR, data_path  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  source, _ = _run_folder(tmp_path)
  out = tmp_path / 'tiny'
  pretrained.export(str(source), str(out), 'mnist', data_dir=str(DATA_DIR),
                    max_examples=200, progress=False, log=lambda msg: None)
  # Moved elsewhere (a fresh clone): the folder still names its checkpoint.
  moved = tmp_path / 'elsewhere' / 'tiny'
  os.renames(out, moved)
  assert tf.train.latest_checkpoint(str(moved)) == str(moved / 'model')
  result = pipeline.attack_checkpoint(
      AttackRun(str(moved), 'PosK', dataset='mnist', data_dir=str(DATA_DIR),
                num_samples=2, batch_size=2, overrides=QUICK, sanity=False,
                out_dir=str(tmp_path / 'attack')),
      progress=False, log=lambda msg: None)
  assert result['summary']['num_samples'] == 2


SHIPPED = ('teacher_mnist_cpu', 'ntat_mnist_cpu', 'hat_mnist_cpu',
           'ad_mnist_cpu', 'margin_at_mnist_cpu')


# Each case computes a whole MNIST test split's features with a full-size
# SCAE (about 20 s on the shared 2-core EPYC); the five run one code path on
# five folders, so the defences' four run with the slow ones. Covered by
# default: test_a_shipped_model_is_whole_and_its_card_tells_the_truth[
# teacher_mnist_cpu] (the same checks, on the teacher) and
# test_a_shipped_model_records_no_path_of_the_machine_that_made_it (every
# folder's k-means files and report).
@pytest.mark.parametrize('name', [SHIPPED[0]] + [
    pytest.param(name, marks=pytest.mark.slow) for name in SHIPPED[1:]])
def test_a_shipped_model_is_whole_and_its_card_tells_the_truth(name):
  """The folder in the repository: under 12 MiB, weights only, k-means
  fitted on exactly these weights, and the card's test accuracies are what
  the shipped k-means gives on the whole MNIST test split."""
  from conftest import DATA_DIR, REPO, data_path  # pylint: disable=g-import-not-at-top
  from scae_tf import data  # pylint: disable=g-import-not-at-top
  from scae_tf import evaluation  # pylint: disable=g-import-not-at-top
  from scae_tf.kmeans import provenance  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  folder = REPO / 'pretrained' / name
  assert sum(f.stat().st_size for f in folder.iterdir()) <= \
      pretrained.MAX_BYTES
  loaded = loading.load_model(str(folder))
  assert not [n for n, _ in tf.train.list_variables(loaded.prefix)
              if n.startswith('optimizer')]
  report = json.load(open(folder / 'model.eval.json'))
  card = (folder / 'MODEL_CARD.md').read_text()
  assert tf.train.latest_checkpoint(str(folder)) == str(folder / 'model')
  feats, labels = evaluation.split_features(
      loaded.model, 'test', str(data.resolve_data_dir('mnist', str(DATA_DIR))))
  for kind in ('prior', 'posterior'):
    clf = loaded.kmeans[f'{kind}_cosine']
    assert not provenance.mismatches(clf.metadata, loaded.prefix, 'mnist',
                                     'resize')
    acc = clf.accuracy(feats[kind], labels)
    assert acc == report['results']['kmeans']['cosine'][kind]['test']
    assert f'{100 * acc:.2f} %' in card
  assert '## Deviations from the paper' in card and '- none' not in card


@pytest.mark.parametrize('name', SHIPPED)
def test_a_shipped_model_records_no_path_of_the_machine_that_made_it(name):
  """Portable: the k-means files and the report name their checkpoint, data
  and classifiers relative to themselves, never by an absolute path."""
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  from scae_tf.kmeans import KMeansClassifier  # pylint: disable=g-import-not-at-top
  folder = REPO / 'pretrained' / name

  def paths(value):
    if isinstance(value, dict):
      return [p for v in value.values() for p in paths(v)]
    return [value] if isinstance(value, str) and '/' in value else []

  for kind in ('prior', 'posterior'):
    clf = KMeansClassifier.load(str(folder / f'model.kmeans_{kind}_cosine.npz'))
    assert clf.metadata['checkpoint'] == 'model'
  report = json.load(open(folder / 'model.eval.json'))
  assert report['checkpoint'] == 'model'
  assert report['classifiers'] == {
      f'{kind}_cosine': f'model.kmeans_{kind}_cosine.npz'
      for kind in ('prior', 'posterior')}
  for path in paths(report):
    assert not os.path.isabs(path), path


def _siblings(folder):
  return sorted(p.name for p in folder.parent.iterdir())


@pytest.mark.parametrize('overwrite', [False, True])
def test_an_interrupted_export_leaves_no_half_written_folder(
    tmp_path, monkeypatch, overwrite):
  """Ctrl-C during the k-means (after the weights are written): no `out`
  with weights and no card, no temporary folder beside it; with
  --overwrite, the previous export is left whole."""
  from scae_tf import evaluation  # pylint: disable=g-import-not-at-top
  source, _ = _run_folder(tmp_path)
  out = tmp_path / 'pretrained' / 'tiny'
  out.parent.mkdir()
  if overwrite:
    out.mkdir()
    (out / 'MODEL_CARD.md').write_text('the previous export')
  before = _siblings(out)

  def interrupted(checkpoint, *args, **kwargs):
    assert os.path.exists(checkpoint + '.index')  # the weights are written
    raise KeyboardInterrupt

  monkeypatch.setattr(evaluation, 'evaluate_checkpoint', interrupted)
  with pytest.raises(KeyboardInterrupt):
    pretrained.export(str(source), str(out), 'mnist', overwrite=overwrite,
                      progress=False, log=lambda msg: None)
  assert _siblings(out) == before
  if overwrite:
    assert os.listdir(out) == ['MODEL_CARD.md']
    assert (out / 'MODEL_CARD.md').read_text() == 'the previous export'


def test_a_killed_exports_temporary_folder_goes_with_the_next_export(
    tmp_path, monkeypatch):
  from scae_tf import evaluation  # pylint: disable=g-import-not-at-top
  source, _ = _run_folder(tmp_path)
  out = tmp_path / 'pretrained' / 'tiny'
  # What an export killed by SIGKILL leaves (its pid no longer runs).
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  stale = out.parent / f'.tiny.partial-{int(dead.stdout)}'
  (stale / 'x').mkdir(parents=True)
  monkeypatch.setattr(evaluation, 'evaluate_checkpoint',
                      lambda *a, **k: (_ for _ in ()).throw(ValueError('x')))
  with pytest.raises(ValueError):
    pretrained.export(str(source), str(out), 'mnist', progress=False,
                      log=lambda msg: None)
  assert _siblings(out) == []


def test_the_card_says_when_it_was_evaluated_on_fewer_examples():
  """--eval_examples: said in the card; the whole splits (the default) as
  the shipped cards say them."""
  from scae_tf import configs as configs_lib  # pylint: disable=g-import-not-at-top

  class Loaded:
    prefix, format = 'runs/x/ckpt/ckpt-40', 'tf2'
    config = configs_lib.tiny_config()

  cell = dict(train=.9, test=.9, **{'train+test': .9})
  results = dict(n_train=200, n_test=200,
                 kmeans=dict(cosine=dict(prior=cell, posterior=cell)),
                 linear_probe=dict(prior=cell, posterior=cell))
  report = dict(dataset='mnist', preprocess='resize', results=results,
                max_examples=200)
  card = pretrained.model_card('tiny', Loaded, report)
  assert ('evaluated on the first 200 examples of each split only '
          '(`--eval_examples=200`)') in card
  card = pretrained.model_card('tiny', Loaded, dict(report, max_examples=None))
  assert 'eval_examples' not in card


def test_export_script_checks_eval_examples_before_loading_tensorflow(
    tmp_path):
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  done = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'export_pretrained.py'),
       f'--source={tmp_path}', f'--out={tmp_path / "out"}',
       '--eval_examples=0'],
      capture_output=True, text=True, check=False, timeout=60)
  assert done.returncode == 1
  assert done.stderr.strip() == 'error: eval_examples must be positive, got 0.'
  assert not (tmp_path / 'out').exists()
