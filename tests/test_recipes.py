"""Model configs and training recipes: which recipe a config trains with,
and the RMSProp epsilon that follows the batch actually fed."""

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import configs
from scae_tf import recipes
from scae_tf import teacher
from scae_tf import training
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp


def test_paper_recipe_is_table_2():
  paper = recipes.get_recipe('paper')
  assert (paper.batch_size, paper.learning_rate, paper.lr_decay) == (
      100, 3e-5, True)
  assert paper.epsilon == pytest.approx(1e-6)
  assert paper.total_steps(600) == 300 * 600
  assert paper.deviation is None


def test_mnist_original_trains_as_upstream():
  config, recipe = teacher.resolve('mnist', config='mnist_original')
  assert config.default_recipe == 'upstream'
  assert (recipe.batch_size, recipe.lr_decay, recipe.preprocess) == (
      128, False, 'pad_shift')
  assert recipe.total_steps(468) == 300_000
  assert recipe.epsilon == pytest.approx(1e-2 / 128 ** 2)
  assert recipe.deviation is None
  _, paper = teacher.resolve('mnist')
  assert paper.name == 'paper'


def test_epsilon_follows_the_batch_and_changes_are_deviations():
  small = recipes.get_recipe('upstream').replace(batch_size=16)
  assert small.epsilon == pytest.approx(1e-2 / 256)
  assert small.deviation == 'upstream recipe with batch_size=16'
  cpu = recipes.get_recipe('cpu').replace(epochs=3)
  assert cpu.deviation.startswith('lr 3e-4 instead of 3e-5')
  assert cpu.deviation.endswith('cpu recipe with epochs=3')
  same = recipes.get_recipe('paper').replace(batch_size=100)
  assert same.deviation is None


def test_overrides_switch_between_epochs_and_steps():
  _, recipe = teacher.resolve(
      'mnist', overrides=teacher.RecipeOverrides(train_steps=40))
  assert (recipe.epochs, recipe.total_steps(600)) == (None, 40)
  _, recipe = teacher.resolve(
      'mnist', config='mnist_original',
      overrides=teacher.RecipeOverrides(epochs=2))
  assert (recipe.train_steps, recipe.total_steps(468)) == (None, 936)


@pytest.mark.parametrize('field, value', [
    ('batch_size', 0), ('learning_rate', -1.), ('learning_rate', 0.),
    ('epochs', -1), ('train_steps', 0), ('preprocess', 'crop')])
def test_bad_recipe_values_are_refused(field, value):
  changes = {field: value}
  if field == 'train_steps':
    changes['epochs'] = None
  with pytest.raises(ValueError, match=field):
    recipes.get_recipe('paper').replace(**changes)


def test_unknown_names():
  with pytest.raises(ValueError, match='Unknown recipe'):
    recipes.get_recipe('fast')
  with pytest.raises(ValueError, match='default_recipe'):
    configs.MNIST.replace(default_recipe='fast')


def test_step_refuses_a_batch_its_epsilon_was_not_derived_for():
  config = configs.tiny_config()
  model = SCAE(config)
  recipe = recipes.get_recipe('paper').replace(batch_size=4)
  opt = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  assert opt.epsilon == pytest.approx(1e-2 / 16)
  step = training.make_train_step(model, opt, noise=False)
  images = tf.zeros([3, 20, 20, 1])
  with pytest.raises(ValueError, match='batch 4, but the step is fed '
                     'batch 3'):
    step(images, tf.zeros([3], tf.int64))
  # An explicit epsilon is not tied to a batch.
  explicit = TF1RMSProp.for_recipe(
      model.trainable_variables, recipe.replace(rmsprop_epsilon=1e-6))
  assert explicit.batch_size is None
  metrics = training.make_train_step(model, explicit, noise=False)(
      images, tf.zeros([3], tf.int64))
  assert np.isfinite(metrics['loss'].numpy())


def test_architecture_ignores_name_noise_and_recipe():
  a = configs.MNIST
  assert a.architecture() == a.without_noise().replace(
      name='x', dataset='fashion_mnist', default_recipe='cpu').architecture()
  assert a.architecture() != a.replace(n_obj_caps=5).architecture()
