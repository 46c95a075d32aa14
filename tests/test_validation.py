"""Bad input to the public model API raises ValueError naming the
expectation (checked before any computation)."""

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import configs
from scae_tf.capsules.model import SCAE

CONFIG = configs.tiny_config()


@pytest.fixture(scope='module')
def model():
  return SCAE(CONFIG)


def _images(*shape, value=.5, dtype=np.float32):
  return np.full(shape or (2, 20, 20, 1), value, dtype)


@pytest.mark.parametrize('images, match', [
    (_images(20, 20, 1), r'shape \[batch, 20, 20, 1\].*got shape \[20, 20, 1\]'),
    (_images(2, 21, 20, 1), r'got shape \[2, 21, 20, 1\]'),
    (_images(2, 20, 20, 3), r'got shape \[2, 20, 20, 3\]'),
    (_images(0, 20, 20, 1), r'got shape \[0, 20, 20, 1\]'),
    (_images(dtype=np.uint8, value=3), 'dtype uint8'),
    (_images(value=np.nan), 'contains NaN'),
    (_images(value=1.5), r'values in \[1.5, 1.5\]'),
    (_images(value=-.1), r'values in \[-0.1, -0.1\]'),
    ([[1, 2]], 'expected a float array'),
])
def test_bad_images(model, images, match):
  with pytest.raises(ValueError, match=match):
    model(images)


def test_bad_labels(model):
  with pytest.raises(ValueError, match=r'expected shape \[2\]'):
    model(_images(), np.array([1, 2, 3]))
  with pytest.raises(ValueError, match=r'values in \[0, 10\)'):
    model(_images(), np.array([1, 10]))
  with pytest.raises(ValueError, match='integers'):
    model(_images(), np.array([1., 2.]))


def test_bad_target(model):
  with pytest.raises(ValueError, match='target'):
    model(_images(), target=_images(value=2.))


def test_good_input_in_all_forms(model):
  for images in (_images(), tf.constant(_images()),
                 _images(dtype=np.float64)):
    out = model(images, np.array([0, 9]))
    assert out.caps_presence_prob.shape == [2, CONFIG.n_obj_caps]
