"""What an attack run asks for: one frozen, validated object.

`AttackRun` holds every setting of an attack of `run/attack.py` (and of the
reproduce stages that attack); building one checks everything that needs
neither a model nor TensorFlow, so the script refuses a bad flag in a
second. `attacks.pipeline.attack_checkpoint(run)` resolves it (checkpoint,
k-means, each attack's config, gradient and folder) into the settings
each attack's folder records (`settings.json`), which is what a resumed run
must match: a request names presets and overrides, the settings what they
resolve to. A shard's record (`pipeline.SHARD_FILE`) holds the request
itself, without where it writes (`request`).
"""

import dataclasses
import os
from typing import Any, Mapping, Optional, Tuple

from attacks import names
from attacks import protocol
from attacks import registry
from attacks import settings as settings_lib
from attacks.quantize import QUANTIZE
from scae_tf import cli
from scae_tf.configs import GRADIENTS

DATASETS = tuple(protocol.PAPER_THRESHOLDS)
#: The overrides of the paper's attack that choose among names, checked by
#: name before TensorFlow loads.
OVERRIDE_CHOICES = (('optimizer', names.OPTIMIZERS),
                    ('subset', names.SUBSET_RULES),
                    ('capsule_loss', names.CAPSULE_LOSSES),
                    ('const_coupling', names.CONST_COUPLINGS),
                    ('success', names.SUCCESS_RULES))
#: The fields that say where a run writes, not what it computes: a shard's
#: record leaves them out, and the merge gives its own.
PLACE_FIELDS = ('out_dir', 'overwrite', 'shard')
#: The fields that are paths: a shard records them absolute, so that the
#: merge reads the same files from another working folder.
PATH_FIELDS = ('checkpoint', 'kmeans', 'data_dir')


@dataclasses.dataclass(frozen=True)
class AttackRun:
  """One attack run.

  checkpoint: anything `scae_tf.loading.load_model` accepts.
  classifier: PriK, PosK, PriL or PosL (`attacks.classifiers`; any case).
  config: a config name or ScaeConfig (default: `load_model`'s choice).
  kmeans: a KMeansClassifier file (.npz / .json) for PriK / PosK (default:
    the cosine one beside the checkpoint).
  allow_kmeans_mismatch: use a k-means classifier fitted on another
    checkpoint, dataset or preprocessing (`kmeans.check_fitted_on`) after a
    warning, instead of refusing it.
  dataset, split, data_dir, preprocess: the attacked images (split default:
    `protocol.DEFAULT_SPLITS`).
  num_samples, batch_size, seed: random samples, attacked this many at a
    time; the seed draws them and seeds the attack.
  attack: a name of `attacks.registry.ATTACKS`, several joined by commas,
    or 'all' (every one). Several run on the same samples, each in
    `<out_dir>/<attack>/`, with their per-sample worst case in `out_dir`.
  preset, overrides: the paper's attack's `attacks.evasion.get_config(
    preset, **overrides)`; the overrides apply to margin_cw's preset too.
  pgd_preset, eps, pgd_overrides: `attacks.pgd.get_config(pgd_preset,
    **pgd_overrides)` at budget eps, which defaults to the threshold for a
    fixed-budget preset, to the preset's search ceiling for `pgd_l2_min`
    (`registry.with_budget`).
  gradient: the input gradient every attack follows, 'code' (the training
    graph's, with its stop-gradients) or 'full' (the classifier's true
    gradient; `scae_tf.configs.GRADIENTS`). None: each attack's own
    (`registry.Entry.gradient`): the paper's attack 'code', as the authors'
    attack differentiated that graph; the adaptive ones 'full'.
  quantize: 'none' or '8bit': every successful image rounded to the 256
    grey levels an 8-bit image file holds, re-verified, and counted only if
    still misclassified (`attacks.quantize`).
  out_dir: default `folder()`.
  overwrite: restart: remove every output of the run in `out_dir` first.
  threshold, plot_max: the L2 of the summary and the curve's largest
    (`attacks.pipeline.thresholds`).
  sanity: run the checks of `attacks.sanity` (PGD at the box's diameter on
    the same samples, in `<out_dir>/sanity_unbounded/`, with the run's PGD
    steps; Gaussian noise at the threshold, `attacks.noise`) and write
    sanity.json and sanity.md to `out_dir`.
  shard: (i, n): attack only the batches b with b % n == i
    (`protocol.shard_batches`), into `out_dir` (default: `folder()` with
    `_shard<i>of<n>`), whose settings record the shard; no reports: the
    merge of the n shards writes them (`attacks.pipeline.merge_shards`).
  """
  checkpoint: str
  classifier: str = 'PosK'
  config: Any = None
  kmeans: Optional[str] = None
  allow_kmeans_mismatch: bool = False
  dataset: str = 'mnist'
  split: Optional[str] = None
  data_dir: Optional[str] = None
  preprocess: str = 'resize'
  num_samples: int = 5000
  batch_size: int = 100
  seed: int = 0
  preset: Any = 'paper_eval'
  overrides: Optional[Mapping[str, Any]] = None
  attack: str = 'capsule'
  pgd_preset: Any = 'pgd_l2_min'
  eps: Optional[float] = None
  pgd_overrides: Optional[Mapping[str, Any]] = None
  gradient: Optional[str] = None
  quantize: str = 'none'
  out_dir: Optional[str] = None
  overwrite: bool = False
  threshold: Optional[float] = None
  plot_max: Optional[float] = None
  sanity: bool = True
  shard: Optional[Tuple[int, int]] = None

  def __post_init__(self):
    # The numbers of an attack's settings are checked where its config is
    # built (it imports TensorFlow); the names here.
    from scae_tf import data  # pylint: disable=g-import-not-at-top
    cli.check_choice('dataset', self.dataset, DATASETS)
    cli.check_choice('preprocess', self.preprocess, data.MODES)
    cli.check_choice('split', self.split, (None,) + tuple(data.SPLITS))
    cli.check_positive('num_samples', self.num_samples)
    cli.check_positive('batch_size', self.batch_size)
    names.classifier_name(self.classifier)
    attacks = self.attack_names()
    if self.gradient is not None:
      cli.check_choice('gradient', self.gradient, GRADIENTS)
    cli.check_choice('quantize', self.quantize, QUANTIZE)
    if self.eps is not None:
      settings_lib.check_positive_number('eps', self.eps)
    # The presets by name (a config object is checked when built), in the
    # words of `settings_lib.preset_config`.
    for name in attacks:
      entry = registry.ATTACKS[name]
      given = entry.preset(self)
      if entry.preset_field and isinstance(given, str) \
          and given not in entry.presets:
        raise cli.UsageError(f'Unknown {entry.what} preset {given!r}; '
                             f'expected one of {", ".join(entry.presets)}.')
    for key, choices in OVERRIDE_CHOICES:
      if key in (self.overrides or {}):
        cli.check_choice(key, self.overrides[key], choices)
    if self.shard is not None:
      check_shard(self.shard, self.num_samples, self.batch_size)

  def classifier_name(self) -> str:
    """The classifier's canonical spelling ('posk' -> 'PosK')."""
    return names.classifier_name(self.classifier)

  def attack_names(self) -> Tuple[str, ...]:
    """The attacks the run runs, in the registry's order."""
    return registry.attack_names(self.attack)

  def split_name(self) -> str:
    """The split attacked: `split`, else the paper's for the dataset."""
    return self.split or protocol.DEFAULT_SPLITS[self.dataset]

  def folder(self) -> str:
    """`out_dir`, or results/attack_<dataset>_<classifier>_<what runs>:
    the preset of a single attack, 'all', or the names joined by '+'; a
    shard's with `_shard<i>of<n>`."""
    if self.out_dir:
      return self.out_dir
    attacks = self.attack_names()
    what = (registry.ATTACKS[attacks[0]].preset(self) if len(attacks) == 1
            else 'all' if self.attack == 'all' else '+'.join(attacks))
    folder = os.path.join(
        'results', f'attack_{self.dataset}_{self.classifier_name()}_{what}')
    return folder + ('' if self.shard is None
                     else f'_shard{self.shard[0]}of{self.shard[1]}')

  def request(self) -> dict:
    """What a shard records of the run: every field but PLACE_FIELDS, the
    paths absolute, a config as a dict. `AttackRun(**request)` (with the
    merge's out_dir) is the unsharded run."""
    request = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in PLACE_FIELDS}
    for key in PATH_FIELDS:
      if request[key] is not None:
        request[key] = os.path.abspath(request[key])
    if dataclasses.is_dataclass(request['config']):
      request['config'] = dataclasses.asdict(request['config'])
    return request


def check_shard(shard: Tuple[int, int], num_samples: int, batch_size: int):
  """UsageError unless shard (i, n) has 0 <= i < n and every one of the n
  shards of the run gets a batch."""
  index, count = shard
  cli.check_positive('shards', count)
  if not 0 <= index < count:
    raise cli.UsageError(f'shard must be 0 to {count - 1} (one of '
                         f'shards={count}), got {index}.')
  batches = len(protocol.shard_batches(num_samples, batch_size))
  if count > batches:
    raise cli.UsageError(
        f'shards={count} exceeds the {batches} batches of the run '
        f'({num_samples} samples, {batch_size} a batch): a shard would '
        'attack none.')
