"""scae_tf.evaluation (and run/evaluate.py) on a tiny model and the first
MNIST examples."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import data_path
from conftest import REPO
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import data
from scae_tf import evaluation
from scae_tf import files
from scae_tf import kmeans
from scae_tf import loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE


def _tiny_checkpoint(tmp_path):
  tf.random.set_seed(0)
  # MNIST digits are resized 28 -> 40, so the canvas cannot be tinier.
  model = SCAE(configs.tiny_config(canvas_size=40))
  model(tf.zeros([2, 40, 40, 1]))
  return checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'tiny'))


def test_evaluate_checkpoint_writes_report_classifiers_and_seed_spread(
    tmp_path):
  data_dir = data_path('mnist').parent
  prefix = _tiny_checkpoint(tmp_path)
  report = evaluation.evaluate_checkpoint(
      prefix, 'mnist', data_dir=str(data_dir), max_examples=200, n_iter=20,
      n_init=2, kmeans='both', seeds=['1'], progress=False)
  assert report['eval_json'] == prefix + '.eval.json'
  saved = json.loads(pathlib.Path(report['eval_json']).read_text())
  assert saved == json.loads(json.dumps(
      {k: v for k, v in report.items() if k != 'eval_json'}))
  assert report['config'] == 'tiny'
  assert report['config_source'] == 'saved beside the checkpoint'
  assert report['results']['n_train'] == report['results']['n_test'] == 200

  # Paths relative to the report's folder: nothing of this machine's.
  assert (report['checkpoint'], report['classifiers']['prior_cosine']) == (
      'tiny', 'tiny.kmeans_prior_cosine.npz')
  here = lambda path: str(tmp_path / path)
  assert os.path.samefile(here(report['data_dir']), data_dir / 'mnist')

  # The probe accuracy is the model's own on the first 200 resized digits.
  model = loading.load_model(prefix).model
  images, labels = data.load_split(here(report['data_dir']), 'test')
  pred = model.forward(tf.constant(data.preprocess(images[:200], 'resize')),
                       full=False).prior_cls_pred.numpy()
  assert report['results']['linear_probe']['prior']['test'] == (
      np.mean(pred == labels[:200]))

  beside = loading.load_model(prefix).kmeans
  assert sorted(beside) == sorted(report['classifiers'])
  for metric in ('cosine', 'euclidean'):
    for kind in ('prior', 'posterior'):
      acc = report['results']['kmeans'][metric][kind]['test']
      spread = report['seed_spread'][metric][kind]
      assert list(spread['per_seed']) == [0, 1]
      # Seed 0 is the main fit: the same number.
      assert spread['per_seed'][0] == acc
      best = spread['best_by_distance']
      assert spread['train_distance'][best['seed']] == min(
          spread['train_distance'].values())
      assert best['test'] == spread['per_seed'][best['seed']]
      clf = KMeansClassifier.load(
          here(report['classifiers'][f'{kind}_{metric}']))
      assert clf.metric == metric and clf.k == 10
      assert clf.metadata['config'] == 'tiny'
      # What the attack checks the classifier against.
      assert {k: clf.metadata[k] for k in ('checkpoint', 'checkpoint_digest',
                                           'dataset', 'preprocess')} == dict(
          checkpoint='tiny', checkpoint_digest=kmeans.checkpoint_digest(
              prefix), dataset='mnist', preprocess='resize')
      np.testing.assert_array_equal(beside[f'{kind}_{metric}'].centers,
                                    clf.centers)
  text = evaluation.format_report(report)
  assert 'over seeds [0, 1]' in text
  assert 'the fit nearest its train features (seed' in text


@pytest.mark.parametrize('arguments, message', [
    (dict(dataset='cifar'), "unknown dataset='cifar'"),
    (dict(seeds=['one']), 'seeds must be integers'),
    (dict(kmeans='manhattan'), "unknown kmeans='manhattan'"),
    (dict(batch_size=0), 'batch_size must be positive'),
    (dict(checkpoint='missing'), 'missing.index does not exist'),
])
def test_bad_arguments_raise_and_write_nothing(tmp_path, arguments, message):
  name = arguments.pop('checkpoint', None)
  checkpoint = str(tmp_path / name) if name else _tiny_checkpoint(tmp_path)
  before = sorted(p.name for p in tmp_path.iterdir())
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    evaluation.evaluate_checkpoint(checkpoint, data_dir=str(tmp_path),
                                   **arguments)
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_output_folder_it_cannot_write_is_an_error_before_the_work(
    tmp_path):
  prefix = _tiny_checkpoint(tmp_path)
  (tmp_path / 'file').write_text('x')
  # No data folder either: the output check comes first.
  with pytest.raises(files.NotWritableError,
                     match=f'cannot write to {tmp_path / "file"}: not a '
                     'folder'):
    evaluation.evaluate_checkpoint(prefix, data_dir=str(tmp_path / 'none'),
                                   out=str(tmp_path / 'file' / 'eval'))


def test_evaluate_script(tmp_path):
  data_dir = data_path('mnist').parent
  prefix = _tiny_checkpoint(tmp_path)
  proc = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'evaluate.py'),
       f'--checkpoint={tmp_path}', f'--data_dir={data_dir}',
       '--max_examples=50', '--n_iter=5', f'--out={tmp_path / "eval"}',
       '--noprogress'],
      capture_output=True, text=True, check=False, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '%|' not in proc.stderr  # no progress bar
  report = json.loads((tmp_path / 'eval.eval.json').read_text())
  assert report['checkpoint'] == 'tiny'  # relative to the report
  assert report['kmeans']['variants'] == ['cosine']
  assert 'k-means cosine / posterior' in proc.stdout
  assert json.loads(proc.stdout[proc.stdout.index('\n{'):]) == dict(
      report, eval_json=str(tmp_path / 'eval.eval.json'))
  # The reported accuracies are the model's and the saved classifiers' own
  # on the first 50 resized test digits.
  model = loading.load_model(prefix).model
  images, labels = data.load_split(str(tmp_path / report['data_dir']),
                                   'test')
  feats = kmeans.collect_features(
      model, data.preprocess(images[:50], 'resize'))
  results = report['results']
  for kind in ('prior', 'posterior'):
    assert results['linear_probe'][kind]['test'] == np.mean(
        feats[f'{kind}_probe_pred'] == labels[:50])
    clf = KMeansClassifier.load(
        str(tmp_path / report['classifiers'][f'{kind}_cosine']))
    assert results['kmeans']['cosine'][kind]['test'] == clf.accuracy(
        feats, labels[:50])
