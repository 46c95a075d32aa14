"""The one model loader of every entry point: a trained SCAE from any path.

  loaded = load_model('runs/teacher_mnist_cpu')         # a training run
  loaded = load_model('path/to/original/model.ckpt')    # TF1, config inferred
  loaded.model.forward(images), loaded.config.name, loaded.kmeans

`path` may be
* a run directory of `run/train_teacher.py` (its latest checkpoint, under
  `<dir>/ckpt/`), or any directory holding checkpoints (the latest one, or
  the only one when no `checkpoint` file says);
* a checkpoint prefix, or its `.index` file: the port's own TF2 checkpoints,
  or the original code's TF1 ones (upstream naming without a scope, or the
  paper authors' fork with a `SCAE/` or `STU/` scope, see
  `scae_tf.checkpoints`).

The config is, in this order: the one given; the one saved beside a TF2
checkpoint; else the named config (`scae_tf.configs.CONFIGS`) whose variables
fit the checkpoint, those made for `dataset` tried first. `mnist` and
`fashion_mnist` share their shapes, so a TF1 checkpoint of either loads as
`mnist` unless `dataset='fashion_mnist'`; `mnist_original` (upstream
`run_mnist.sh`: 40 part and 32 object capsules) is told apart by its shapes.

`run/evaluate.py` saves its k-means classifiers beside the checkpoint
(`kmeans_path`); they come with the model.
"""

import dataclasses
import glob
import os
from typing import Any, Callable, Dict, Optional, Sequence, Union

import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import files
from scae_tf import kmeans as kmeans_lib
from scae_tf import run_folder
from scae_tf.capsules.model import SCAE

# How the config of a `LoadedModel` was found.
CONFIG_GIVEN = 'given'
CONFIG_SAVED = 'saved beside the checkpoint'
CONFIG_INFERRED = 'inferred from the checkpoint'


@dataclasses.dataclass(frozen=True)
class LoadedModel:
  """A model with its weights loaded, and what is known about it.

  Attributes:
    model: the `SCAE`, built from `config`, without its presence noise unless
      loaded with `noise=True` (the noise only acts in training anyway).
    config: the checkpoint's config as trained, noise settings included.
    prefix: the checkpoint prefix that was read.
    format: 'tf1' (the original code's name-based checkpoint) or 'tf2'.
    config_source: CONFIG_GIVEN, CONFIG_SAVED or CONFIG_INFERRED.
    kmeans: {'<prior|posterior>_<metric>': KMeansClassifier} saved beside the
      checkpoint (see `kmeans_path`).
    optimizer: the optimiser restored with the model, or None.
  """
  model: SCAE
  config: configs.ScaeConfig
  prefix: str
  format: str
  config_source: str
  kmeans: Dict[str, kmeans_lib.KMeansClassifier]
  optimizer: Any = None


def find_checkpoint(path: str) -> str:
  """The checkpoint prefix that `path` designates (see the module doc): a
  run folder's latest checkpoint (in its `ckpt/`), a folder's latest or
  only one, or the checkpoint a prefix or `.index` file names."""
  path = os.fspath(path)
  if os.path.isdir(path):
    for folder in (path, os.path.join(path, run_folder.CHECKPOINT_DIR)):
      latest = _latest_in(folder) if os.path.isdir(folder) else None
      if latest is not None:
        return latest
    raise FileNotFoundError(
        f'no checkpoint found in directory {path!r} nor in its '
        f'{run_folder.CHECKPOINT_DIR}/ subdirectory.')
  return checkpoints.checkpoint_prefix(path)


def _latest_in(folder):
  """The checkpoint that the folder's `checkpoint` file names, else its only
  checkpoint: copied original checkpoints often lack that file, or it names
  the absolute path of the machine that trained them."""
  latest = tf.train.latest_checkpoint(folder)
  if latest is not None:
    return latest
  prefixes = sorted(name[:-len('.index')] for name in os.listdir(folder)
                    if name.endswith('.index'))
  if len(prefixes) > 1:
    raise FileNotFoundError(
        f'{folder!r} holds several checkpoints ({", ".join(prefixes)}) and '
        'no `checkpoint` file names the latest; pass one of them.')
  return os.path.join(folder, prefixes[0]) if prefixes else None


def checkpoint_format(prefix: str) -> str:
  """'tf1' or 'tf2'; CorruptCheckpointError if its index cannot be read."""
  return 'tf1' if checkpoints.is_tf1_checkpoint(prefix) else 'tf2'


def kmeans_path(prefix: str, kind: str, metric: str = 'cosine') -> str:
  """Where the k-means classifier of `prefix` on `kind` features is saved."""
  return f'{prefix}.kmeans_{kind}_{metric}.npz'


def kmeans_beside(prefix: str) -> Dict[str, kmeans_lib.KMeansClassifier]:
  """The k-means classifiers saved beside the checkpoint `prefix`, keyed
  '<kind>_<metric>' (e.g. 'posterior_cosine')."""
  found = {}
  for kind in kmeans_lib.FEATURE_KINDS:
    for metric in kmeans_lib.METRICS:
      path = kmeans_path(prefix, kind, metric)
      if os.path.exists(path):
        found[f'{kind}_{metric}'] = kmeans_lib.KMeansClassifier.load(path)
  return found


ConfigLike = Union[str, configs.ScaeConfig, None]
OptimizerFactory = Callable[[Sequence[tf.Variable]], Any]


def load_model(path: str, config: ConfigLike = None, *,
               dataset: Optional[str] = None, scope: Optional[str] = None,
               noise: bool = False,
               optimizer: Optional[OptimizerFactory] = None,
               kmeans: bool = True) -> LoadedModel:
  """Builds the SCAE of a checkpoint and loads its weights.

  Args:
    path: run directory, checkpoint directory, prefix or `.index` file, of a
      TF2 (port) or TF1 (original) checkpoint.
    config: a config name or `ScaeConfig`; it wins over the saved and the
      inferred one (a TF2 checkpoint saved with another architecture is then
      refused).
    dataset: the data set the model is meant for; only orders the named
      configs tried when inferring one.
    scope: the model's variable scope in a TF1 checkpoint ('', 'SCAE',
      'STU'); detected when None.
    noise: build the model with the config's presence noise (to train on).
    optimizer: to continue training: a function of the model's trainable
      variables returning the optimiser whose state is restored too, e.g.
      `scae_tf.optim.TF1RMSProp`.
    kmeans: also load the k-means classifiers saved beside the checkpoint.

  Raises:
    FileNotFoundError: no checkpoint at `path`.
    CorruptCheckpointError: a file of the checkpoint cannot be read back.
    CheckpointMismatchError: the checkpoint does not fit the given config, or
      no named config fits it.
    ValueError: an unknown config name.
  """
  prefix = find_checkpoint(path)
  fmt = checkpoint_format(prefix)
  if fmt == 'tf1' and scope is None:
    # Fails early, and clearly, on a TF1 checkpoint that is not an SCAE's.
    scope = checkpoints.detect_scope(
        checkpoints.open_checkpoint(prefix).get_variable_to_shape_map())
  if isinstance(config, str):
    config = configs.get_config(config)
  source = CONFIG_GIVEN
  if config is None and fmt == 'tf2':
    config = checkpoints.read_config(prefix)
    source = CONFIG_SAVED

  def build(candidate):
    model = SCAE(candidate if noise else candidate.without_noise())
    opt = None if optimizer is None else optimizer(model.trainable_variables)
    checkpoints.load_checkpoint(model, prefix, optimizer=opt, scope=scope)
    return model, opt

  if config is None:
    config, (model, opt) = _infer_config(prefix, build, dataset)
    source = CONFIG_INFERRED
  else:
    model, opt = build(config)
  return LoadedModel(model=model, config=config, prefix=prefix, format=fmt,
                     config_source=source,
                     kmeans=kmeans_beside(prefix) if kmeans else {},
                     optimizer=opt)


def _infer_config(prefix, build, dataset):
  """(config, build(config)) for the first named config that fits."""
  named = list(configs.CONFIGS.values())
  # A stable sort: the configs made for `dataset` first, in registry order.
  named.sort(key=lambda c: c.dataset != dataset)
  for candidate in named:
    try:
      return candidate, build(candidate)
    except checkpoints.CheckpointMismatchError:
      continue
  raise checkpoints.CheckpointMismatchError(
      f'no named config fits checkpoint {prefix!r} (tried '
      f'{", ".join(c.name for c in named)}); pass its config.')


def output_prefix(out: str, overwrite: bool = False) -> str:
  """The checkpoint prefix that `out` designates for writing: `out/ckpt` for
  an existing folder. Refuses (FileExistsError) to replace a checkpoint
  unless `overwrite`, and a folder it cannot write to (NotWritableError)."""
  out = os.fspath(out)
  if os.path.isdir(out):
    out = os.path.join(out, 'ckpt')
  existing = glob.glob(glob.escape(out) + '.index') + glob.glob(
      glob.escape(out) + '.data-*')
  if existing and not overwrite:
    raise FileExistsError(
        f'{out} is an existing checkpoint ({existing[0]}); pass --overwrite '
        '(overwrite=True) to replace it, or another --out.')
  files.check_writable(os.path.dirname(os.path.abspath(out)))
  return out


def convert_tf1_checkpoint(tf1_path: str, out: str,
                           config: ConfigLike = None, *,
                           scope: Optional[str] = None,
                           with_optimizer: bool = False,
                           overwrite: bool = False) -> dict:
  """Writes an original TF1 checkpoint as the port's TF2 checkpoint.

  The config is resolved as by `load_model` (given, else inferred). With
  `with_optimizer`, the RMSProp slots and `global_step` are converted too, to
  continue an original run. `out` is a prefix, or an existing folder (then
  `out/ckpt`); an existing checkpoint there is replaced only with
  `overwrite`. Nothing is written when the checkpoint does not load.

  Returns a report: the source `path`, `n_tensors` and `n_params` of the
  model, `optimizer_restored`, the `config` name, the `out` prefix written and,
  with the optimiser, its `global_step`.
  """
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top
  prefix = find_checkpoint(tf1_path)
  if checkpoint_format(prefix) != 'tf1':
    raise ValueError(f'{prefix!r} is already a TF2 checkpoint of the port.')
  out = output_prefix(out, overwrite)
  # The saved config is the one trained with: keep its noise.
  loaded = load_model(prefix, config, scope=scope, noise=True,
                      optimizer=TF1RMSProp if with_optimizer else None,
                      kmeans=False)
  # What was derived from the replaced checkpoint would describe the new one.
  for pattern in ('.kmeans_*.npz', '.eval.json'):
    for path in glob.glob(glob.escape(out) + pattern):
      os.remove(path)
  variables = checkpoints.tf1_variable_map(loaded.model).values()
  report = dict(
      path=prefix, n_tensors=len(variables),
      n_params=int(sum(v.shape.num_elements() for v in variables)),
      optimizer_restored=with_optimizer, config=loaded.config.name,
      out=checkpoints.save_tf2_checkpoint(loaded.model, out,
                                          loaded.optimizer))
  if with_optimizer:
    report['global_step'] = int(loaded.optimizer.step.numpy())
  return report
