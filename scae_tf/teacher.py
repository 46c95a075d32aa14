"""Training the teacher SCAE (paper section 3, Table 3) on the engine.

`train_teacher(run)` is what `run/train_teacher.py` runs, for the
`TeacherRun` (teacher_run.py) its flags build: resolve (model config, recipe,
strategy, data, the run's folder and identity), build (model, optimiser,
initial weights), train (evaluators and `scae_tf.training.train_loop`).
Re-running the same run resumes it in its folder.
"""

import dataclasses
import os
from typing import Union

import numpy as np
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import data
from scae_tf import recipes
from scae_tf import run_folder
from scae_tf import training
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp
# RecipeOverrides is imported for the callers that build their overrides as
# `teacher.RecipeOverrides`.
from scae_tf.teacher_run import RecipeOverrides  # pylint: disable=unused-import
from scae_tf.teacher_run import TeacherRun

EVAL_BATCH = 500


def resolve(dataset='mnist', config=None, recipe=None, overrides=None):
  """(model config, training recipe) of a teacher run; raises ValueError on
  unknown names or bad values, before any work."""
  run = TeacherRun(dataset, config=config, recipe=recipe, overrides=overrides)
  return run.model_config(), run.training_recipe()


@dataclasses.dataclass
class _Plan:
  """A `TeacherRun` resolved: what the run trains, on what, where."""
  run: TeacherRun
  config: configs.ScaeConfig
  recipe: recipes.TrainingRecipe
  strategy: tf.distribute.Strategy
  stream: data.BatchStream
  total_steps: int
  logdir: str
  chief: bool
  settings: dict


def train_teacher(run: Union[TeacherRun, str, None] = None, *, progress=True,
                  log=print, **fields):
  """Trains (or resumes) the teacher of `run`; returns the last step's
  metrics.

  run: a `TeacherRun`; or, as callers did before it, its fields (the
    dataset also as the first argument) as keywords. Worker i > 0 of a
    multi-worker run keeps its own copy of the run in `<logdir>.worker<i>`.

  Raises ValueError / OSError for bad arguments, a log directory holding
  another run or in use by another process (`training.FolderInUseError`) or
  not writable, before any work; NonFiniteLossError; TrainingInterrupted
  (Ctrl-C, after saving).
  """
  if not isinstance(run, TeacherRun):
    run = TeacherRun(*([] if run is None else [run]), **fields)
  elif fields:
    raise TypeError(f'train_teacher takes a TeacherRun or its fields as '
                    f'keywords, not both: {sorted(fields)}.')
  plan = _resolve(run)
  if not plan.chief:
    progress, log = False, _quiet
  # Checks that write nothing first: the lock would leave its file in a
  # folder that is refused. Only a run that starts needs initial weights.
  resuming = training.check_logdir(plan.logdir, plan.settings, run.overwrite)
  if not resuming and run.init_from:
    checkpoints.check_readable(checkpoints.checkpoint_prefix(run.init_from))
  with training.lock_folder(plan.logdir):
    change = (training.length_change(plan.logdir, plan.settings)
              if resuming else None)
    resumed = training.prepare_logdir(plan.logdir, plan.settings,
                                      run.overwrite)
    if change:
      log(change)
    model, optimizer = _build(plan, resumed, log)
    return _train(plan, model, optimizer, progress, log)


def _resolve(run):
  """The run's config, recipe, strategy, data, folder and identity; a batch
  that does not split over the replicas is refused here."""
  config, recipe = run.model_config(), run.training_recipe()
  strategy = training.make_strategy(run.strategy)
  replicas = strategy.num_replicas_in_sync
  if recipe.batch_size % replicas:
    raise ValueError(f'The batch ({recipe.batch_size}) must split evenly '
                     f'over the {replicas} replicas.')
  stream = data.BatchStream(run.dataset, 'train', recipe.batch_size,
                            preprocess=recipe.preprocess, seed=run.seed,
                            data_dir=run.data_dir)
  logdir = run.run_folder()
  worker, chief = training.distribute.worker_role()
  if not chief:
    logdir = f'{logdir}.worker{worker}'
  settings = training.run_settings(config, recipe, dataset=run.dataset,
                                   seed=run.seed, init_from=run.init_from,
                                   replicas=replicas)
  return _Plan(run, config, recipe, strategy, stream,
               recipe.total_steps(stream.steps_per_epoch), logdir, chief,
               settings)


def _build(plan, resumed, log):
  """The model and its optimiser, under the strategy, from the run's seed;
  a run that starts takes its initial weights from `init_from`."""
  run = plan.run
  tf.random.set_seed(run.seed)
  np.random.seed(run.seed)  # the template init draws from numpy
  with plan.strategy.scope():
    model = SCAE(plan.config)
    optimizer = TF1RMSProp.for_recipe(model.trainable_variables, plan.recipe)
  # Not from `resumed`: a run killed before its first checkpoint has its
  # run.json, and restarts from the initial weights.
  has_checkpoints = resumed and bool(run_folder.checkpoint_files(
      os.path.join(plan.logdir, run_folder.CHECKPOINT_DIR)))
  if run.init_from and not has_checkpoints:
    report = checkpoints.load_checkpoint(model, run.init_from)
    log(f'initialised from {report["path"]}')
  return model, optimizer


def _train(plan, model, optimizer, progress, log):
  """The training loop to the run's end, with the test probes after every
  epoch (and the k-means curve if asked) on the chief."""
  run, recipe = plan.run, plan.recipe
  log(f'run {plan.logdir}: config {plan.config.name}, recipe {recipe.name}, '
      f'{plan.total_steps} steps ({plan.stream.steps_per_epoch} per epoch), '
      f'{plan.strategy.num_replicas_in_sync} replica(s)')
  if recipe.deviation:
    log(f'DEVIATION from the paper: {recipe.deviation}')

  def batches(split):
    return lambda: data.eval_batches(run.dataset, split, EVAL_BATCH,
                                     preprocess=recipe.preprocess,
                                     data_dir=run.data_dir)

  evaluators = []
  if plan.chief:
    evaluators.append(training.ProbeAccuracy(model, batches('test')))
    if run.kmeans_every_epoch:
      evaluators.append(training.KMeansCurve(
          model, batches('train'), batches('test'), seed=run.seed))
  metrics = training.train_loop(
      model, optimizer, plan.stream, plan.logdir, plan.total_steps,
      training.LoopOptions(
          noise=recipe.noise, seed=run.seed, evaluators=evaluators,
          save_every=run.save_every, strategy=plan.strategy,
          progress=progress, log=log))
  log(f'done: step {int(optimizer.step.numpy())}, loss '
      f'{metrics.get("loss", float("nan")):.2f}')
  return metrics


def _quiet(*args, **kwargs):
  del args, kwargs
