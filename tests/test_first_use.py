"""What a newcomer meets first (issue 25): smoke runs of the defence
trainer (the final k-means on a few examples or none, said so; the plot of
a run of two steps has a curve in every panel), the training scripts'
--helpshort, the attack's estimate after its first batch, and the README's
Python snippet."""

import json
import os
import re
import subprocess
import sys
import time

import matplotlib.figure
import numpy as np
import pytest

from conftest import DATA_DIR, data_path, REPO, train_defense  # pylint: disable=g-bad-import-order
from attacks import evasion
from attacks import protocol
from scae_tf import configs
from scae_tf import data

SMALL = configs.tiny_config(canvas_size=40).without_noise()
# One outer iteration: the compiled step traces each one anew.
QUICK = dict(outer_iterations=1, inner_iterations=2)


def _stream(n=12):
  """3 batches of 4 an epoch: a stop at step 2 falls between epoch ends."""
  rng = np.random.RandomState(0)
  return data.BatchStream.from_arrays(
      (rng.rand(n, 28, 28) * 255).astype(np.uint8), rng.randint(0, 10, n),
      4, 'resize', seed=0)


@pytest.fixture
def figures(monkeypatch):
  """The figures the code under test saves."""
  saved = []
  save = matplotlib.figure.Figure.savefig

  def spy(fig, *args, **kwargs):
    saved.append(fig)
    return save(fig, *args, **kwargs)

  monkeypatch.setattr(matplotlib.figure.Figure, 'savefig', spy)
  return saved


def _smoke(logdir, **kwargs):
  data_path('mnist')
  logs = []
  train_defense(
      'at', logdir=str(logdir), epochs=1, max_train_steps=2, batch_size=4,
      config=SMALL, stream=_stream(), attack_overrides=QUICK,
      eval_data=lambda: [_stream().batch(0)], data_dir=str(DATA_DIR),
      progress=False, log=logs.append, **kwargs)
  records = [json.loads(line) for line in open(logdir / 'log.jsonl')]
  return logs, records


def _drawn(ax):
  """Whether a panel shows something: a line through two points or more,
  or a marked point."""
  return any(len(line.get_xdata()) >= 2
             or (len(line.get_xdata()) == 1
                 and line.get_marker() not in (None, 'None', '', ' '))
             for line in ax.get_lines())


def test_a_two_step_run_fits_its_kmeans_on_n_examples_and_plots_data(
    tmp_path, figures):
  logs, records = _smoke(tmp_path / 'run', kmeans_examples=30)
  final = str(tmp_path / 'run' / 'ckpt' / 'ckpt-2')
  report = json.load(open(f'{final}.eval.json'))
  assert report['max_examples'] == 30
  assert report['results']['n_train'] == report['results']['n_test'] == 30
  assert os.path.exists(f'{final}.kmeans_posterior_cosine.npz')
  assert ('REDUCED evaluation: final k-means fitted on the first 30 of 60000 '
          'train examples and scored on the first 30 of 10000 test examples '
          '(--kmeans_examples=30; the paper uses all)') in logs
  kmeans = [r for r in records if r.get('kmeans')]
  assert len(kmeans) == 1 and kmeans[0]['kmeans_examples'] == 30
  assert kmeans[0]['kmeans_train_examples'] == 30 and 'wall_time' in kmeans[0]
  # The probes' test accuracy at the stop, which falls between epoch ends.
  probes = [r for r in records if r.get('eval') and not r.get('kmeans')]
  assert [r['step'] for r in probes] == [2]
  assert 0. <= probes[0]['posterior_probe_acc'] <= 1.
  # Every panel of the plot has data; the reduction is in its title and
  # the k-means legend.
  (fig,) = figures
  axes = fig.axes
  assert len(axes) == 4 and all(_drawn(ax) for ax in axes), [
      ax.get_title() for ax in axes if not _drawn(ax)]
  assert 'k-means on 30 examples' in fig._suptitle.get_text()  # pylint: disable=protected-access
  assert any('(30 examples)' in line.get_label()
             for line in axes[2].get_lines())
  assert (tmp_path / 'run' / 'accuracy.png').stat().st_size > 0
  # Run again, finished: nothing is fitted or logged twice.
  logs, again = _smoke(tmp_path / 'run', kmeans_examples=30)
  assert again == records
  assert f'{final} is evaluated already ({final}.eval.json)' in logs


def test_nofit_kmeans_skips_the_kmeans_and_says_so(tmp_path, figures):
  logs, records = _smoke(tmp_path / 'run', fit_kmeans=False)
  final = str(tmp_path / 'run' / 'ckpt' / 'ckpt-2')
  assert not [name for name in os.listdir(tmp_path / 'run' / 'ckpt')
              if '.kmeans_' in name or name.endswith('.eval.json')]
  assert not [r for r in records if r.get('kmeans')]
  assert (f'no final k-means (--nofit_kmeans): PriK / PosK attacks need '
          f'one; `python run/evaluate.py --checkpoint={final} '
          '--dataset=mnist` fits it') in logs
  (fig,) = figures
  assert all(_drawn(ax) for ax in fig.axes)
  assert 'no final k-means (--nofit_kmeans)' in fig._suptitle.get_text()  # pylint: disable=protected-access


@pytest.mark.parametrize('kwargs, message', [
    (dict(kmeans_examples=0), '--kmeans_examples must be positive, got 0'),
    (dict(kmeans_examples=10, fit_kmeans=False),
     '--kmeans_examples sizes the final k-means that --nofit_kmeans skips'),
])
def test_bad_kmeans_flags_are_refused_before_any_work(tmp_path, kwargs,
                                                      message):
  with pytest.raises(ValueError, match=message):
    train_defense('at', logdir=str(tmp_path / 'run'), config=SMALL,
                  stream=_stream(), **kwargs)
  assert not (tmp_path / 'run').exists()


def _script(name, *args):
  return subprocess.run(
      [sys.executable, str(REPO / 'run' / name), *args], capture_output=True,
      text=True, timeout=120, check=False)


@pytest.mark.parametrize('script, wanted', [
    ('train_defense.py', ('--logdir', '--[no]overwrite', '--[no]fit_kmeans',
                          '--kmeans_examples', '--max_train_steps')),
    ('train_teacher.py', ('--logdir', '--[no]overwrite', '--max_train_steps')),
])
def test_helpshort_lists_the_run_flags(script, wanted):
  shown = _script(script, '--helpshort').stdout
  missing = [flag for flag in wanted if f'  {flag}:' not in shown]
  assert not missing, shown


def test_a_zero_kmeans_examples_flag_is_refused_before_tensorflow_loads():
  result = _script('train_defense.py', '--method=at', '--kmeans_examples=0')
  assert result.returncode != 0
  assert '--kmeans_examples=0' in result.stderr
  assert 'Traceback' not in result.stderr


def test_the_first_batch_gives_the_rest_of_the_attack_its_duration():
  now = time.mktime((2030, 1, 7, 9, 0, 0, 0, 0, -1))  # a Monday, 09:00
  assert protocol.eta_line(100, 200., 4900, now=now) == (
      'first batch: 100 samples in 3 min; the 4900 left take about 2.7 h '
      'more at this rate (done about Mon 11:43)')
  assert protocol.eta_line(10, 40., 20, now=now).startswith(
      'first batch: 10 samples in 40 s; the 20 left take about 80 s more')
  assert protocol.eta_line(10, 40., 0) is None
  # The first iteration compiles the graph: the rest of the batch sets the
  # rate. 9 iterations; the first report at 10 s, the last (8) at 26 s.
  steady = protocol.steady_seconds([(10., 0, 9), (12., 1, 9), (26., 8, 9)])
  assert steady == 18.
  assert protocol.eta_line(100, 30., 200, steady=steady, now=now).startswith(
      'first batch: 100 samples in 30 s; the 200 left take about 36 s more')
  assert protocol.steady_seconds([(10., 0, 1)]) is None


class SlowAttack:
  """Succeeds everywhere after `seconds`, reporting one iteration."""

  def __init__(self, seconds):
    self.seconds = seconds

  def __call__(self, images, labels, seed=None, callback=None):
    time.sleep(self.seconds)
    callback(0, 1)
    n = len(images)
    return evasion.AttackResult(
        adversarial=np.asarray(images, np.float32), success=np.ones(n, bool),
        l2=np.ones(n, np.float32), clean_pred=np.asarray(labels),
        const_history=np.zeros((1, n)), hit_history=np.ones((1, n), bool))


def test_the_attack_prints_its_estimate_after_the_first_batch_it_attacks(
    tmp_path, capsys):
  images = np.zeros((5, 4, 4, 1), np.float32)
  labels = np.zeros(5, np.int64)
  protocol.run_protocol(SlowAttack(.2), images[:2], labels[:2],
                        str(tmp_path), batch_size=2, progress=False)
  capsys.readouterr()
  # Resumed: batch 0 is loaded, batch 1 is the first attacked (2 samples,
  # 2 s), batch 2 (1 sample) is left: about 1 s.
  protocol.run_protocol(SlowAttack(.2), images, labels, str(tmp_path),
                        batch_size=2, progress=False)
  lines = [line for line in capsys.readouterr().err.splitlines()
           if line.startswith('first batch')]
  assert len(lines) == 1, lines
  assert re.match(r'first batch: 2 samples in 0 s; the 1 left take about '
                  r'0 s more at this rate \(done about \w{3} \d\d:\d\d\)$',
                  lines[0]), lines


def test_the_readmes_python_snippet_runs(monkeypatch):
  data_path('mnist')
  readme = (REPO / 'README.md').read_text()
  (snippet,) = [block for block in re.findall(r'```python\n(.*?)```', readme,
                                               re.S) if 'load_model' in block]
  monkeypatch.chdir(REPO)
  monkeypatch.setenv('SCAE_DATA_DIR', str(DATA_DIR))
  names = {}
  exec(compile(snippet, 'README.md', 'exec'), names)  # pylint: disable=exec-used
  assert sorted(names['loaded'].kmeans) == ['posterior_cosine',
                                            'prior_cosine']
  assert names['pred'].shape == (100,)
  assert np.mean(names['pred'] == names['labels'][:100]) > .8
