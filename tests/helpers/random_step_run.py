"""A resumable training run whose compiled step draws random numbers from a
checkpointed `tf.random.Generator` and counts its steps in a checkpointed
variable, as the defences' adversarial steps do. Run as a script:

  python random_step_run.py LOGDIR STEPS

Re-running resumes from LOGDIR. The test kills it with SIGKILL and checks
that the resumed run ends bit-identical to an uninterrupted one.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from scae_tf import training  # pylint: disable=g-import-not-at-top
import tiny_run  # pylint: disable=g-import-not-at-top


def run(logdir, steps):
  config, recipe, model, opt, stream = tiny_run.build()
  # Seeded the same on every start: only the checkpoint can tell a resumed
  # run where the stream of draws stands.
  generator = tf.random.Generator.from_seed(1)
  noisy_steps = tf.Variable(0, dtype=tf.int64)

  def noisy_objective(model, batch, ctx):
    images, labels = batch
    noise = generator.uniform(tf.shape(images), maxval=.1)
    noisy_steps.assign_add(1)
    return training.scae_objective(
        model, (tf.clip_by_value(images + noise, 0., 1.), labels), ctx)

  training.prepare_logdir(logdir, training.run_settings(config, recipe))
  training.train_loop(model, opt, stream, logdir, steps, noise=False, seed=0,
                      loss_fn=noisy_objective, save_every=3, progress=False,
                      state=dict(generator=generator,
                                 noisy_steps=noisy_steps))
  np.savez(os.path.join(logdir, 'final.npz'),
           weights=np.concatenate([v.numpy().ravel()
                                   for v in model.variables]),
           generator_state=generator.state.numpy(),
           noisy_steps=noisy_steps.numpy())


if __name__ == '__main__':
  run(sys.argv[1], int(sys.argv[2]))
