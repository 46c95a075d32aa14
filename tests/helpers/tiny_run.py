"""The tiny run of the helper scripts: a model, its optimiser and its data,
built the same on every start, as a restarted process must."""

import numpy as np
import tensorflow as tf

from scae_tf import configs
from scae_tf import data
from scae_tf import recipes
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp


def build():
  """(config, recipe, model, optimizer, batch stream) of the tiny run."""
  tf.random.set_seed(0)
  np.random.seed(0)
  config = configs.tiny_config()
  model = SCAE(config)
  recipe = recipes.get_recipe('paper').replace(batch_size=4,
                                               learning_rate=1e-3)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  rng = np.random.RandomState(0)
  stream = data.BatchStream.from_arrays(
      (rng.rand(24, 16, 16) * 255).astype(np.uint8), rng.randint(0, 10, 24),
      4, 'pad_center', seed=0, canvas_size=20)
  return config, recipe, model, opt, stream
