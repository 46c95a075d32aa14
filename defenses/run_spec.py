"""What a defence run asks for: one frozen, validated object.

`DefenceRun` holds every setting of `run/train_defense.py` (and of the
reproduce stages that train a defence); building one checks everything that
needs no model, so the script refuses a bad flag before TensorFlow loads.
`defenses.trainer.train_defense(run)` resolves it (teacher, config, phases,
generator) into the run's identity, `run.json`, which is what a resumed run
must match: a request names the method and its overrides, the identity
what they resolve to.
"""

import dataclasses
import os
from typing import Any, Mapping, Optional

from defenses import methods


@dataclasses.dataclass(frozen=True)
class DefenceRun:
  """One defence run.

  method: 'at', 'ad', 'hat' or 'ntat'.
  teacher: the teacher of AD / HAT / NTAT: a run directory of
    run/train_teacher.py or any checkpoint `load_model` reads (original TF1
    ones included). Its config is the student's, with noise off.
  preset: 'paper' (section 6.2's epochs) or 'cpu' (a labelled deviation).
  init: where the student starts, 'scratch' or 'teacher'; None: the
    method's own (AT, AD, HAT from scratch, NTAT from the teacher). Another
    start is a deviation (a CPU budget too short to train a student from
    scratch).
  epochs: the length of a one-phase method (AT, AD, NTAT); ad_epochs,
    at_epochs: that of the method's AD / AT phase.
  lr_schedule: 'code' (what the authors' code ran) or 'decay' (Table 2).
  ad_target: 'input' (code) or 'clean' (Eq. 8 as written).
  ad_weight: lambda of Eq. 8. clean_batches: k, the clean batches between
    two adversarial ones.
  generator: G of Algorithm 5 (`methods.GENERATORS`): 'paper_train' (the
    paper's) or 'margin_pgd' (margin AT, beyond the paper, a deviation).
  xla_generator: XLA-compile the generator's inner loop inside the
    (uncompiled) training step: the same method, other float rounding, so
    part of the run's identity (`attack.jit_compile`), not a deviation.
  batch_size, learning_rate, attack_overrides: deviations from the paper
    (tests, budgets); attack_overrides apply to the generator's attack.
  max_train_steps: stop at this step (a smoke test, or a budget); the same
    run without it resumes to the end. A stopped run is evaluated as a
    finished one, and its report says where it stopped.
  fit_kmeans: fit the final cosine k-means (False: skip it, and say so);
    kmeans_examples: fit and score it on the first N examples of each split
    instead of all, a reduction labelled in every output.
  config: the model config of a method without teacher (default: the
    dataset's); with a teacher, the config the teacher must have.
  save_every, overwrite, logdir (default runs/<method>_<dataset>),
    data_dir: the run folder and the data, as every run/ script.
  """
  method: str
  dataset: str = 'mnist'
  teacher: Optional[str] = None
  logdir: Optional[str] = None
  seed: int = 0
  preset: str = 'paper'
  init: Optional[str] = None
  epochs: Optional[int] = None
  ad_epochs: Optional[int] = None
  at_epochs: Optional[int] = None
  lr_schedule: str = 'code'
  ad_target: str = 'input'
  ad_weight: float = 0.5
  clean_batches: int = 1
  batch_size: Optional[int] = None
  learning_rate: Optional[float] = None
  generator: str = 'paper_train'
  xla_generator: bool = False
  attack_overrides: Optional[Mapping[str, Any]] = None
  max_train_steps: Optional[int] = None
  data_dir: Optional[str] = None
  save_every: int = 1000
  fit_kmeans: bool = True
  kmeans_examples: Optional[int] = None
  overwrite: bool = False
  config: Any = None

  def __post_init__(self):
    # pylint: disable=g-import-not-at-top
    from scae_tf import cli
    from scae_tf import data
    from scae_tf import named
    # pylint: enable=g-import-not-at-top
    method = self.resolved_method()
    self.phases()
    cli.check_choice('ad_target', self.ad_target, methods.AD_TARGETS)
    if method.needs_teacher and self.teacher is None:
      raise ValueError(f'--method={method.name}'
                       + (' --init=teacher' if method.init == 'teacher'
                          else '') + ' needs --teacher.')
    if not method.needs_teacher and self.teacher is not None:
      raise ValueError(f'--method={method.name} trains from scratch and '
                       'takes no --teacher.')
    if not 0. <= self.ad_weight <= 1.:
      raise ValueError(f'--lambda_ must be in [0, 1], got {self.ad_weight}.')
    if self.clean_batches < 0:
      raise ValueError(f'--k must be >= 0, got {self.clean_batches}.')
    if self.save_every < 1:
      raise ValueError(f'save_every must be positive, got {self.save_every}.')
    if self.max_train_steps is not None and self.max_train_steps < 1:
      raise ValueError(f'--max_train_steps must be positive, got '
                       f'{self.max_train_steps}.')
    if self.kmeans_examples is not None and self.kmeans_examples < 1:
      raise ValueError(f'--kmeans_examples must be positive, got '
                       f'{self.kmeans_examples}.')
    if self.kmeans_examples is not None and not self.fit_kmeans:
      raise ValueError('--kmeans_examples sizes the final k-means that '
                       '--nofit_kmeans skips: give one of them.')
    named.lookup(dict.fromkeys(methods.GENERATORS), self.generator,
                 'generator')
    data.get_dataset_spec(self.dataset)

  def resolved_method(self) -> methods.Method:
    """The method, starting where `init` says."""
    return methods.get_method(self.method).starting_from(self.init)

  def phases(self):
    """The phases with their epochs and learning-rate decay."""
    return methods.plan(self.resolved_method(), self.ad_epochs,
                        self.at_epochs, self.lr_schedule, epochs=self.epochs,
                        preset=methods.get_preset(self.preset))

  def run_folder(self) -> str:
    """`logdir`, or runs/<method>_<dataset>."""
    return self.logdir or os.path.join(
        'runs', f'{self.resolved_method().name}_{self.dataset}')
