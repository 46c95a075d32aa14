"""What a teacher run asks for: one frozen, validated object.

`TeacherRun` holds every setting of `run/train_teacher.py` (and of the
reproduce stage that trains a teacher); building one checks everything that
needs no model, so the script refuses a bad flag before TensorFlow loads,
with the line the library would give. `scae_tf.teacher.train_teacher(run)`
resolves it (model config, recipe with the overrides, strategy, data) into
the run's identity, `run.json`: the config and the recipe written out in
full, the dataset, the seed, the initial weights and the replica count.
That is what a resumed run must match: a request names a config and a
recipe, the identity records what they stood for, so a run whose names
have changed meaning is refused rather than silently changed. The run's
length, its folder, save_every, the per-epoch k-means and overwrite are
not part of it.

This module imports no TensorFlow.
"""

import dataclasses
import os
from typing import Optional, Union

from scae_tf import cli
from scae_tf import configs
from scae_tf import data
from scae_tf import recipes


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

  def check(self):
    """UsageError for a value no recipe takes, in the flags' words."""
    for name, value in (('batch_size', self.batch_size),
                        ('epochs', self.epochs),
                        ('max_train_steps', self.train_steps)):
      cli.check_positive(name, value, optional=True)
    if self.preprocess is not None:
      cli.check_choice('preprocess', self.preprocess, recipes.PREPROCESSING)

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


@dataclasses.dataclass(frozen=True)
class TeacherRun:
  """One teacher run (paper section 3, Table 3).

  dataset: 'mnist' or 'fashion_mnist'.
  config, recipe: names (config also a ScaeConfig); default: the dataset's
    config and that config's recipe.
  overrides: a `RecipeOverrides`; any change labels the run a deviation.
  logdir: the run folder (default runs/teacher_<dataset>_<recipe>).
  seed: of the initial weights, the data order and the presence noise.
  init_from: initial weights, a TF1 or TF2 checkpoint (ignored when
    resuming from a checkpoint).
  save_every: checkpoint every N steps (and at every epoch end).
  kmeans_every_epoch: also fit the fork's cosine k-means after every epoch.
  strategy: 'default', 'mirrored' or 'multiworker' (`TF_CONFIG`); the
    global batch is the recipe's, split over the replicas.
  overwrite: restart the run in `logdir` (see `training.prepare_logdir`).
  data_dir: the folder of the IDX files.
  """
  dataset: str = 'mnist'
  config: Union[str, configs.ScaeConfig, None] = None
  recipe: Optional[str] = None
  overrides: Optional[RecipeOverrides] = None
  logdir: Optional[str] = None
  seed: int = 0
  init_from: Optional[str] = None
  data_dir: Optional[str] = None
  save_every: int = 1000
  kmeans_every_epoch: bool = False
  strategy: str = 'default'
  overwrite: bool = False

  def __post_init__(self):
    if self.overrides is None:
      object.__setattr__(self, 'overrides', RecipeOverrides())
    cli.check_positive('save_every', self.save_every)
    self.model_config()
    recipe = self._named_recipe()
    self.overrides.check()
    cli.check_choice('strategy', self.strategy, recipes.STRATEGIES)
    self.overrides.apply(recipe)

  def model_config(self) -> configs.ScaeConfig:
    """The model config: `config`, or the dataset's."""
    data.get_dataset_spec(self.dataset)
    if isinstance(self.config, configs.ScaeConfig):
      return self.config
    return configs.get_config(self.config or self.dataset)

  def _named_recipe(self) -> recipes.TrainingRecipe:
    return recipes.get_recipe(self.recipe
                              or self.model_config().default_recipe)

  def training_recipe(self) -> recipes.TrainingRecipe:
    """The recipe with the overrides applied."""
    return self.overrides.apply(self._named_recipe())

  def run_folder(self) -> str:
    """`logdir`, or runs/teacher_<dataset>_<recipe>."""
    return self.logdir or os.path.join(
        'runs', f'teacher_{self.dataset}_{self.training_recipe().name}')
