"""run/evaluate.py end to end on a tiny model and the first MNIST examples."""

import json
import pathlib
import subprocess
import sys

import tensorflow as tf

from conftest import data_path
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf.kmeans import KMeansClassifier
from scae_tf.model import SCAE

REPO = pathlib.Path(__file__).resolve().parents[1]


def _evaluate(*flags):
  return subprocess.run([sys.executable, str(REPO / 'run' / 'evaluate.py'),
                         *flags], capture_output=True, text=True, check=False)


def _tiny_checkpoint(tmp_path):
  tf.random.set_seed(0)
  # MNIST digits are resized 28 -> 40, so the canvas cannot be tinier.
  model = SCAE(configs.tiny_config(canvas_size=40))
  model(tf.zeros([2, 40, 40, 1]))
  return checkpoints.save_tf2_checkpoint(model, str(tmp_path / 'tiny'))


def test_evaluate_writes_report_classifiers_and_seed_spread(tmp_path):
  data_dir = data_path('mnist').parent
  prefix = _tiny_checkpoint(tmp_path)
  out = tmp_path / 'eval'
  proc = _evaluate(f'--checkpoint={prefix}', '--dataset=mnist',
                   f'--data_dir={data_dir}', '--max_examples=200',
                   '--n_iter=20', '--n_init=2', '--kmeans=both',
                   '--seeds=1', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  report = json.loads((tmp_path / 'eval.eval.json').read_text())
  assert report['config'] == 'tiny'
  assert report['config_source'] == 'saved beside the checkpoint'
  assert report['results']['n_train'] == report['results']['n_test'] == 200
  for metric in ('cosine', 'euclidean'):
    for kind in ('prior', 'posterior'):
      acc = report['results']['kmeans'][metric][kind]['test']
      assert 0. <= acc <= 1.
      spread = report['seed_spread'][metric][kind]
      assert list(spread['per_seed']) == ['0', '1']  # JSON keys
      # Seed 0 is the main fit: the same number.
      assert spread['per_seed']['0'] == acc
      best = spread['best_by_distance']
      distance = spread['train_distance']
      assert distance[str(best['seed'])] == min(distance.values())
      assert best['test'] == spread['per_seed'][str(best['seed'])]
      clf = KMeansClassifier.load(report['classifiers'][f'{kind}_{metric}'])
      assert clf.metric == metric and clf.k == 10
  assert 'over seeds [0, 1]' in proc.stdout
  assert 'the fit nearest its train features (seed' in proc.stdout


def test_evaluate_bad_flags_exit_1_and_write_nothing(tmp_path):
  prefix = _tiny_checkpoint(tmp_path)
  before = sorted(p.name for p in tmp_path.iterdir())
  for flag in ('--dataset=cifar', '--seeds=one', '--kmeans=manhattan'):
    proc = _evaluate(f'--checkpoint={prefix}', flag)
    assert proc.returncode == 1, (flag, proc.stderr[-1000:])
    assert 'error:' in proc.stderr
  proc = _evaluate(f'--checkpoint={tmp_path / "missing"}')
  assert proc.returncode == 1 and 'does not exist' in proc.stderr
  assert sorted(p.name for p in tmp_path.iterdir()) == before
