"""A TF2 checkpoint written by an earlier version of the port still loads.

`tests/golden/tiny_v1` is a 3-step run of the tiny config written at commit
f08a697 (`tests/golden/make_tiny_v1.py`), before the model config and the
training recipe were split: its saved config still carries the optimiser
fields. Loading it must give the model and optimiser state it was saved with.
"""

import pathlib

import numpy as np
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp

GOLDEN = pathlib.Path(__file__).parent / 'golden' / 'tiny_v1'


def test_golden_tiny_checkpoint_loads_with_its_outputs():
  prefix = checkpoints.checkpoint_prefix(str(GOLDEN / 'ckpt'))
  config = checkpoints.read_config(prefix)
  assert config.name == 'tiny' and config.canvas_size == 20
  model = SCAE(config)
  optimizer = TF1RMSProp(model.trainable_variables)
  checkpoints.load_checkpoint(model, prefix, optimizer=optimizer)
  expected = np.load(GOLDEN / 'expected.npz')
  out = model.forward(tf.constant(expected['images']),
                      tf.constant(expected['labels']), full=False)
  for key in ('caps_presence_prob', 'posterior_mixing_probs', 'rec_ll'):
    np.testing.assert_allclose(getattr(out, key).numpy(), expected[key],
                               rtol=1e-6, atol=1e-7, err_msg=key)
  np.testing.assert_allclose(model.loss(out).numpy(), expected['loss'],
                             rtol=1e-6)
  assert int(optimizer.step.numpy()) == int(expected['step']) == 3
  np.testing.assert_array_equal(optimizer.ms[0].numpy(), expected['ms0'])
  np.testing.assert_array_equal(optimizer.mom[0].numpy(), expected['mom0'])
