"""A small HAT run (2 AD + 2 AT epochs of 2 batches on the tiny 40x40
config) that kills itself (SIGKILL) after a chosen optimiser step, for
tests/test_defenses.py. Run as a script:

  python defence_run.py LOGDIR TEACHER [KILL_AFTER_STEP]

Re-running resumes from LOGDIR. The kill comes right after the step's
update, before its log record and its checkpoint (checkpoints are written
at epoch ends only), so the resumed run must replay the step from the
previous epoch's checkpoint: student, RMSProp slots, phase, adversarial
counter and the attack's generator.
"""

import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top

from defenses import trainer  # pylint: disable=g-import-not-at-top
from defenses.run_spec import DefenceRun  # pylint: disable=g-import-not-at-top
from scae_tf import configs  # pylint: disable=g-import-not-at-top
from scae_tf import data  # pylint: disable=g-import-not-at-top
from scae_tf.training import loop  # pylint: disable=g-import-not-at-top

SMALL = configs.tiny_config(canvas_size=40).without_noise()
QUICK = dict(outer_iterations=2, inner_iterations=3)


def stream():
  rng = np.random.RandomState(0)
  return data.BatchStream.from_arrays(
      (rng.rand(8, 28, 28) * 255).astype(np.uint8), rng.randint(0, 10, 8),
      4, 'resize', seed=0)


def kill_after(step):
  """Makes the loop's progress bar SIGKILL this process once it counts
  `step` (the loop advances it right after each optimiser step)."""

  class Bar(loop.tqdm):

    def __init__(self, *args, initial=0, **kwargs):
      super().__init__(*args, initial=initial, **kwargs)
      self.done = initial  # A disabled tqdm does not count.

    def update(self, n=1):
      super().update(n)
      self.done += n
      if self.done >= step:
        os.kill(os.getpid(), signal.SIGKILL)

  loop.tqdm = Bar


def test_batches():
  """The per-epoch probe evaluation's data: 8 images, as the training."""
  images, labels = stream().batch(0)
  return [(images, labels)]


def run(logdir, teacher):
  return trainer.train_defense(
      DefenceRun('hat', teacher=teacher, logdir=logdir, ad_epochs=2,
                 at_epochs=2, batch_size=4, attack_overrides=QUICK,
                 config=SMALL, save_every=1000, fit_kmeans=False),
      stream=stream(), eval_data=test_batches, progress=False,
      log=lambda msg: None)


if __name__ == '__main__':
  if len(sys.argv) > 3:
    kill_after(int(sys.argv[3]))
  run(sys.argv[1], sys.argv[2])
