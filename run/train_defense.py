"""Trains a defended SCAE: AT, AD, HAT or NTAT (paper section 5), resumably.

  python run/train_defense.py --method=at
  python run/train_defense.py --method=ad --teacher=runs/teacher_mnist_paper
  python run/train_defense.py --method=hat --teacher=path/to/fork/model.ckpt
  python run/train_defense.py --method=ntat --teacher=pretrained/teacher_mnist_cpu
  python run/train_defense.py --method=ntat --teacher=... --preset=cpu
  python run/train_defense.py --method=hat --teacher=... --preset=cpu --init=teacher
  python run/train_defense.py --method=ntat --teacher=... --generator=margin_pgd

Defaults are the authors' code (docs/code_vs_paper.md, defences): every
second batch adversarial (Algorithm 5 against the trained model's posterior
probe), lr 3e-5 decayed in AD phases only (--lr_schedule=decay: paper Table 2
everywhere), AD's student reconstructing its own input (--ad_target=clean:
Eq. 8 as written). --preset=cpu (one epoch per phase) is a deviation for a
CPU budget, written into every output. Re-running the same command resumes;
a run stopped by --max_train_steps resumes without it. Ctrl-C or SIGTERM
stops within seconds, even inside an adversarial batch (that step is
undone), saves the step before and prints the command that resumes; a bad
flag is refused before TensorFlow loads. A smoke run:

  python run/train_defense.py --method=ntat --teacher=pretrained/teacher_mnist_cpu \\
      --max_train_steps=2 --kmeans_examples=1000 --logdir=/tmp/smoke
"""

from absl import app
from absl import flags

from scae_tf import cli

flags.DEFINE_string('method', None, 'at, ad, hat or ntat.')
flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('teacher', None, 'The teacher (AD, HAT, NTAT): a run '
                    'directory of run/train_teacher.py or a TF1/TF2 '
                    'checkpoint.')
flags.DEFINE_string('preset', 'paper', 'paper (section 6.2: AT and AD 100 '
                    'epochs, HAT 50 + 50, NTAT 50) or cpu (1 epoch per phase, '
                    'a deviation).')
flags.DEFINE_string('init', None, 'Where the student starts: scratch or '
                    'teacher (default: the method\'s own, paper section 5; '
                    'another is a deviation).')
flags.DEFINE_integer('epochs', None, 'Epochs of a one-phase method (AT, AD, '
                     'NTAT; default: the preset\'s).')
for _kind, _defaults in (('ad', 'AD 100, HAT 50'),
                         ('at', 'AT 100, HAT 50, NTAT 50')):
  flags.DEFINE_integer(f'{_kind}_epochs', None, f'Epochs of the '
                       f'{_kind.upper()} phase (default: {_defaults}).')
flags.DEFINE_string('lr_schedule', 'code', 'code (as the authors\' code ran) '
                    'or decay (paper Table 2 everywhere).')
flags.DEFINE_string('ad_target', 'input', 'AD reconstruction target: input '
                    '(code) or clean (Eq. 8).')
flags.DEFINE_integer('k', 1, 'Clean batches between two adversarial ones '
                     '(paper: 1, every second batch adversarial).',
                     lower_bound=0)
flags.DEFINE_float('lambda_', 0.5, 'lambda of Eq. 8, the distillation weight '
                   '(AD, HAT).', lower_bound=0., upper_bound=1.)
flags.DEFINE_string('generator', 'paper_train', 'The adversarial batches\' '
                    'attack: paper_train (the paper\'s, Algorithm 5) or '
                    'margin_pgd (margin AT: PGD-L2 on the posterior probe\'s '
                    'margin, beyond the paper, a deviation).')
flags.DEFINE_bool('xla_generator', False, 'XLA-compile the adversarial '
                  'batches\' attack loop (same method, other rounding; part '
                  'of the run\'s identity). Faster on some CPUs only: time '
                  'it with benchmarks/step_costs.py --xla_generator.')
flags.DEFINE_integer('max_train_steps', None, 'Stop at this step, evaluate '
                     'and plot (a smoke test or a time budget); the same '
                     'command without it resumes.', lower_bound=1)
flags.DEFINE_bool('fit_kmeans', True, 'Fit the cosine k-means of PriK / '
                  'PosK on the final checkpoint (about 5 minutes on all '
                  'MNIST digits on 2 cores); --nofit_kmeans skips it.')
flags.DEFINE_integer('kmeans_examples', None, 'Fit and score the final '
                     'k-means on the first N examples of each split '
                     '(default: all, the paper\'s protocol); a smaller N is '
                     'a reduction, labelled in every output.', lower_bound=1)
flags.mark_flag_as_required('method')
cli.define_run_flags('runs/<method>_<dataset>')
# --helpshort lists the shared run flags (--logdir, ...) with this script's.
flags.adopt_module_key_flags(cli)
FLAGS = flags.FLAGS


def _run_spec():
  """The run the flags ask for; building it checks everything that needs no
  model, before TensorFlow loads: a bad flag is refused in a second (the
  numbers by their flags' bounds)."""
  from defenses.run_spec import DefenceRun  # pylint: disable=g-import-not-at-top
  return DefenceRun(
      FLAGS.method, dataset=FLAGS.dataset, teacher=FLAGS.teacher,
      logdir=FLAGS.logdir, seed=FLAGS.seed, preset=FLAGS.preset,
      init=FLAGS.init, epochs=FLAGS.epochs, ad_epochs=FLAGS.ad_epochs,
      at_epochs=FLAGS.at_epochs, lr_schedule=FLAGS.lr_schedule,
      ad_target=FLAGS.ad_target, ad_weight=FLAGS.lambda_,
      clean_batches=FLAGS.k, generator=FLAGS.generator,
      xla_generator=FLAGS.xla_generator,
      max_train_steps=FLAGS.max_train_steps, fit_kmeans=FLAGS.fit_kmeans,
      kmeans_examples=FLAGS.kmeans_examples, data_dir=FLAGS.data_dir,
      save_every=FLAGS.save_every, overwrite=FLAGS.overwrite)


def _train():
  run = _run_spec()
  # Imported here so that --help and a bad flag answer without loading
  # TensorFlow.
  from defenses import trainer  # pylint: disable=g-import-not-at-top
  trainer.train_defense(run, progress=FLAGS.progress)


def main(argv):
  return cli.run(argv, _train, resumable=True)


if __name__ == '__main__':
  app.run(main)
