"""Training the teacher SCAE (paper section 3, Table 3) on the engine.

`train_teacher` is what `run/train_teacher.py` runs: the model config, its
training recipe (`scae_tf.recipes`), the data stream, the optimiser and the
evaluators, handed to `scae_tf.training.train_loop`. Re-running the same call
resumes the run in `logdir`.
"""

import dataclasses
import os
from typing import Optional

import numpy as np
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import cli
from scae_tf import configs
from scae_tf import data
from scae_tf import recipes
from scae_tf import training
from scae_tf.model import SCAE
from scae_tf.optim import TF1RMSProp

EVAL_BATCH = 500


@dataclasses.dataclass(frozen=True)
class RecipeOverrides:
  """Command-line changes to a recipe; None keeps the recipe's value."""
  batch_size: Optional[int] = None
  epochs: Optional[int] = None
  train_steps: Optional[int] = None
  learning_rate: Optional[float] = None
  lr_decay: Optional[bool] = None
  preprocess: Optional[str] = None
  noise: Optional[bool] = None

  def apply(self, recipe):
    changes = {k: v for k, v in dataclasses.asdict(self).items()
               if v is not None}
    if 'train_steps' in changes and 'epochs' in changes:
      # One of them would silently win.
      raise cli.UsageError(
          f'give epochs ({self.epochs}) or max_train_steps '
          f'({self.train_steps}), not both.')
    if 'train_steps' in changes:
      changes['epochs'] = None
    elif 'epochs' in changes:
      changes['train_steps'] = None
    return recipe.replace(**changes) if changes else recipe


def resolve(dataset='mnist', config=None, recipe=None, overrides=None):
  """(model config, training recipe) of a teacher run; raises ValueError on
  unknown names or bad values, before any work."""
  data.get_dataset_spec(dataset)
  if not isinstance(config, configs.ScaeConfig):
    config = configs.get_config(config or dataset)
  recipe = recipes.get_recipe(recipe or config.default_recipe)
  return config, (overrides or RecipeOverrides()).apply(recipe)


def train_teacher(dataset='mnist', config=None, recipe=None, overrides=None,
                  logdir=None, seed=0, init_from=None, data_dir=None,
                  save_every=1000, kmeans_every_epoch=False,
                  strategy='default', overwrite=False, progress=True,
                  log=print):
  """Trains (or resumes) a teacher; returns the last step's metrics.

  Args:
    dataset: 'mnist' or 'fashion_mnist'.
    config, recipe: names (config also a ScaeConfig); default: the
      dataset's config and its recipe.
    overrides: a `RecipeOverrides`; any change labels the run a deviation.
    logdir: the run folder (default runs/teacher_<dataset>_<recipe>).
    init_from: initial weights, a TF1 or TF2 checkpoint (ignored when
      resuming from a checkpoint).
    overwrite: restart the run in `logdir` (see `training.prepare_logdir`).
    strategy: 'default', 'mirrored' or 'multiworker' (`TF_CONFIG`); the
      global batch is the recipe's, split over the replicas. Worker i > 0 of
      a multi-worker run keeps its own copy of the run in `<logdir>.worker<i>`.

  Raises ValueError / OSError for bad arguments, a log directory holding
  another run or in use by another process (`training.FolderInUseError`) or
  not writable, before any work; NonFiniteLossError; TrainingInterrupted
  (Ctrl-C, after saving).
  """
  # Every argument is checked before the log directory is touched.
  cli.check_positive('save_every', save_every)
  config, recipe = resolve(dataset, config, recipe, overrides)
  strategy = training.make_strategy(strategy)
  replicas = strategy.num_replicas_in_sync
  if recipe.batch_size % replicas:
    raise ValueError(f'The batch ({recipe.batch_size}) must split evenly '
                     f'over the {replicas} replicas.')
  stream = data.BatchStream(dataset, 'train', recipe.batch_size,
                            preprocess=recipe.preprocess, seed=seed,
                            data_dir=data_dir)
  total_steps = recipe.total_steps(stream.steps_per_epoch)
  logdir = logdir or os.path.join('runs', f'teacher_{dataset}_{recipe.name}')
  worker, chief = training.distribute.worker_role()
  if not chief:
    logdir, progress, log = f'{logdir}.worker{worker}', False, _quiet
  settings = training.run_settings(config, recipe, dataset=dataset,
                                   seed=seed, init_from=init_from,
                                   replicas=replicas)
  # Checks that write nothing first: the lock would leave its file in a
  # folder that is refused. Only a run that starts needs initial weights.
  resuming = training.check_logdir(logdir, settings, overwrite)
  if not resuming and init_from:
    checkpoints.check_readable(checkpoints.resolve_checkpoint(init_from))
  with training.lock_folder(logdir):
    change = training.length_change(logdir, settings) if resuming else None
    resumed = training.prepare_logdir(logdir, settings, overwrite)
    if change:
      log(change)
    return _train(dataset, config, recipe, stream, logdir, total_steps,
                  strategy, resumed=resumed, seed=seed, init_from=init_from,
                  data_dir=data_dir, save_every=save_every,
                  kmeans_every_epoch=kmeans_every_epoch, chief=chief,
                  progress=progress, log=log)


def _train(dataset, config, recipe, stream, logdir, total_steps, strategy, *,
           resumed, seed, init_from, data_dir, save_every, kmeans_every_epoch,
           chief, progress, log):
  """`train_teacher` in its checked, prepared and locked log directory."""
  tf.random.set_seed(seed)
  np.random.seed(seed)  # the template init draws from numpy
  with strategy.scope():
    model = SCAE(config)
    optimizer = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  ckpt_dir = os.path.join(logdir, training.CHECKPOINT_DIR)
  # Not from `resumed`: a run killed before its first checkpoint has its
  # run.json, and restarts from the initial weights.
  has_checkpoints = resumed and os.path.isdir(ckpt_dir) and any(
      name.endswith('.index') for name in os.listdir(ckpt_dir))
  if init_from and not has_checkpoints:
    report = checkpoints.load_checkpoint(model, init_from)
    log(f'initialised from {report["path"]}')
  log(f'run {logdir}: config {config.name}, recipe {recipe.name}, '
      f'{total_steps} steps ({stream.steps_per_epoch} per epoch), '
      f'{strategy.num_replicas_in_sync} replica(s)')
  if recipe.deviation:
    log(f'DEVIATION from the paper: {recipe.deviation}')

  def batches(split):
    return lambda: data.eval_batches(dataset, split, EVAL_BATCH,
                                     preprocess=recipe.preprocess,
                                     data_dir=data_dir)

  evaluators = []
  if chief:
    evaluators.append(training.ProbeAccuracy(model, batches('test')))
    if kmeans_every_epoch:
      evaluators.append(training.KMeansCurve(
          model, batches('train'), batches('test'), seed=seed))
  metrics = training.train_loop(
      model, optimizer, stream, logdir, total_steps, noise=recipe.noise,
      seed=seed, evaluators=evaluators, save_every=save_every,
      strategy=strategy, progress=progress, log=log)
  log(f'done: step {int(optimizer.step.numpy())}, loss '
      f'{metrics.get("loss", float("nan")):.2f}')
  return metrics


def _quiet(*args, **kwargs):
  del args, kwargs
