"""A tiny attack or defence run as a script runs it (under `scae_tf.cli.run`,
so Ctrl-C and SIGTERM stop it gracefully), for tests/test_interrupts.py,
which signals it:

  python interrupt_run.py attack OUT_DIR CHECKPOINT DATA_DIR SAMPLES INNER
  python interrupt_run.py defence LOGDIR INNER

attack: the paper's attack (PosK, 2 outer iterations of INNER steps) on
SAMPLES MNIST test digits, 2 a batch, no sanity checks. Before each outer
iteration's compiled call runs (its tracing done first), it prints `outer`
on stdout: a signal sent then lands in the compiled loop.
defence: AT for one epoch of two batches of 4 (the second adversarial, 1
outer iteration of INNER steps), a checkpoint after every step.
Re-running the same command resumes.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# pylint: disable=g-import-not-at-top
import numpy as np

from scae_tf import cli
# pylint: enable=g-import-not-at-top


def say_before_each_outer_call():
  from attacks import evasion  # pylint: disable=g-import-not-at-top
  init = evasion.CapsuleAttack.__init__

  def init_with_marker(self, *args, **kwargs):
    init(self, *args, **kwargs)
    compiled = self._outer

    def outer(*call_args):
      compiled.get_concrete_function(*call_args)  # traced: only runs below
      print('outer', flush=True)
      return compiled(*call_args)

    self._outer = outer

  evasion.CapsuleAttack.__init__ = init_with_marker


def attack(out_dir, checkpoint, data_dir, samples, inner):
  # pylint: disable=g-import-not-at-top
  from attacks import pipeline
  from attacks.run_spec import AttackRun
  # pylint: enable=g-import-not-at-top
  say_before_each_outer_call()
  pipeline.attack_checkpoint(
      AttackRun(checkpoint, 'PosK', data_dir=data_dir, out_dir=out_dir,
                num_samples=int(samples), batch_size=2, seed=3, sanity=False,
                overrides=dict(outer_iterations=2,
                               inner_iterations=int(inner))),
      progress=False, log=cli.log)


def defence(logdir, inner):
  # pylint: disable=g-import-not-at-top
  from defenses import trainer
  from defenses.run_spec import DefenceRun
  from scae_tf import configs
  from scae_tf import data
  # pylint: enable=g-import-not-at-top
  rng = np.random.RandomState(0)
  stream = data.BatchStream.from_arrays(
      (rng.rand(8, 28, 28) * 255).astype(np.uint8), rng.randint(0, 10, 8), 4,
      'resize', seed=0)
  trainer.train_defense(
      DefenceRun(
          'at', logdir=logdir, epochs=1, batch_size=4,
          attack_overrides=dict(outer_iterations=1,
                                inner_iterations=int(inner)),
          config=configs.tiny_config(canvas_size=40), save_every=1,
          fit_kmeans=False),
      stream=stream, eval_data=lambda: [stream.batch(0)], progress=False,
      log=cli.log)


if __name__ == '__main__':
  run = dict(attack=attack, defence=defence)[sys.argv[1]]
  sys.exit(cli.run(sys.argv[:1], lambda: run(*sys.argv[2:]),
                   resumable=True))
