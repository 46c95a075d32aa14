"""What a scale runs, the paper's numbers to compare with, and what each
kind of stage has cost on our CPU.

Plain data. 'paper' is section 6.2 and Tables 1, 2, 4: every defence for
its own epochs from scratch (NTAT from the teacher), 5000 samples. 'cpu'
is the CPU campaign (RESULTS, the CPU campaign): every defence 1200 steps
from the teacher's weights, 200 samples; a DEVIATION written into every
output it makes.
"""

import dataclasses
from typing import Mapping, Optional, Tuple

#: The models of the paper's tables, in their order, and what they are.
MODEL_NAMES = dict(teacher='SCAE', at='AT-SCAE', ad='AD-SCAE',
                   hat='HAT-SCAE', ntat='NTAT-SCAE', margin_at='margin AT')
CLASSIFIERS = ('PriK', 'PosK')


@dataclasses.dataclass(frozen=True)
class Scale:
  """name; teacher_recipe: the teacher's recipe (`scae_tf.recipes`);
  defences: (model name, `train_defense` keyword arguments) in order;
  num_samples: attacked test samples per model and classifier; attack:
  `AttackRun.attack` ('all': the paper's and the adaptive ones);
  classifiers: the attacked k-means classifiers;
  kmeans_examples: examples of each split for the k-means (None: all);
  deviation: how the scale departs from the paper, or None.

  config, teacher_overrides, attack_overrides: tiny settings for tests
  (a config name; `RecipeOverrides` and `AttackRun` fields).
  """
  name: str
  description: str
  teacher_recipe: str
  defences: Tuple[Tuple[str, Mapping], ...]
  num_samples: int
  attack: str = 'all'
  classifiers: Tuple[str, ...] = CLASSIFIERS
  kmeans_examples: Optional[int] = None
  deviation: Optional[str] = None
  config: Optional[str] = None
  teacher_overrides: Mapping = dataclasses.field(default_factory=dict)
  attack_overrides: Mapping = dataclasses.field(default_factory=dict)

  def models(self):
    return ('teacher',) + tuple(name for name, _ in self.defences)


SCALES = {s.name: s for s in (
    Scale('paper', "section 6.2: the paper's recipe (Table 2) for the "
          'teacher, AT and AD 100 epochs, HAT 50 + 50, NTAT 50, 5000 '
          'samples per attack',
          teacher_recipe='paper',
          defences=(('at', dict(method='at')), ('ad', dict(method='ad')),
                    ('hat', dict(method='hat')),
                    ('ntat', dict(method='ntat'))),
          num_samples=5000),
    Scale('cpu', 'the CPU campaign: every defence 1200 steps from the '
          "teacher's weights (HAT 1 + 1 epochs, AD and NTAT 2), margin AT "
          'beside them, 200 samples per attack',
          teacher_recipe='cpu',
          defences=(('ad', dict(method='ad', epochs=2, init='teacher')),
                    ('hat', dict(method='hat', preset='cpu',
                                 init='teacher')),
                    ('ntat', dict(method='ntat', epochs=2)),
                    ('margin_at', dict(method='ntat', epochs=2,
                                       generator='margin_pgd'))),
          num_samples=200,
          deviation='the CPU campaign, not the paper\'s protocol: the '
                    "CPU recipe's teacher, every defence 1200 steps from the "
                    "teacher's weights (AT from the teacher is NTAT, so AT "
                    'is not trained), 200 samples per attack instead of '
                    '5000'),
)}


def get_scale(name: str) -> Scale:
  from scae_tf import named  # pylint: disable=g-import-not-at-top
  return named.lookup(SCALES, name, 'scale')


#: The paper's numbers, in %: (table, classifier, model) -> {dataset: value}.
#: Tables 3, 5, 7: clean k-means accuracy; 6, 8: under the paper's attack
#: at L2 <= 4 (MNIST) / 5 (Fashion-MNIST).
def _rows(table, classifier, **models):
  return {(table, classifier, model): dict(mnist=m, fashion_mnist=f)
          for model, (m, f) in models.items()}


PAPER = {
    **_rows('3', 'PriK', teacher=(97.40, 67.71)),
    **_rows('3', 'PosK', teacher=(97.63, 66.83)),
    **_rows('5', 'PriK', teacher=(97.40, 67.71), at=(85.18, 58.87),
            ad=(97.68, 61.15), hat=(95.22, 59.17)),
    **_rows('5', 'PosK', teacher=(97.63, 66.83), at=(80.97, 59.64),
            ad=(97.92, 61.03), hat=(95.85, 60.98)),
    **_rows('6', 'PriK', teacher=(0.38, 3.82), at=(58.56, 20.70),
            ad=(66.80, 36.20), hat=(81.36, 37.38)),
    **_rows('6', 'PosK', teacher=(0.76, 1.86), at=(64.50, 37.94),
            ad=(58.26, 25.62), hat=(82.14, 37.20)),
    **_rows('7', 'PriK', teacher=(97.40, 67.71), ntat=(96.74, 60.11),
            hat=(95.22, 59.17)),
    **_rows('7', 'PosK', teacher=(97.63, 66.83), ntat=(96.94, 61.74),
            hat=(95.85, 60.98)),
    **_rows('8', 'PriK', teacher=(0.38, 3.82), ntat=(42.20, 33.26),
            hat=(81.36, 37.38)),
    **_rows('8', 'PosK', teacher=(0.76, 1.86), ntat=(51.90, 33.92),
            hat=(82.14, 37.20)),
}
TABLES = {
    '3': ('Accuracy of the teacher (clean, k-means)', 'clean', ('teacher',)),
    '5': ('Clean accuracy of SCAE and the three defences', 'clean',
          ('teacher', 'at', 'ad', 'hat')),
    '6': ("Accuracy under the paper's attack (L2 <= threshold)", 'attacked',
          ('teacher', 'at', 'ad', 'hat')),
    '7': ('Clean accuracy of NTAT and HAT', 'clean',
          ('teacher', 'ntat', 'hat')),
    '8': ("Accuracy of NTAT and HAT under the paper's attack", 'attacked',
          ('teacher', 'ntat', 'hat')),
}


@dataclasses.dataclass(frozen=True)
class Cost:
  """A measured cost: `seconds` per `unit`, where and how it was measured."""
  seconds: float
  unit: str
  measured: str


#: What a stage's unit of work cost on our 2-core CPU (RESULTS.md). The
#: plan's estimates multiply these; nothing else is assumed. No GPU has been
#: measured, so no GPU figure is given.
COSTS = {
    'teacher': Cost(0.115, 'training step (batch 100)',
                    'RESULTS, the teacher: 69 s per 600-step epoch of the '
                    'CPU recipe, native resampler kernel'),
    'defence': Cost(7.99, 'training step (every second batch adversarial)',
                    'RESULTS, NTAT: steps 660-1200 alone on an AVX-512 '
                    'Intel Xeon, 2 cores'),
    'kmeans': Cost(540., 'fit and report on both splits',
                   'issue 25: about 9 min for the final k-means on 60k '
                   'training digits, AVX-512 Intel Xeon'),
    'attack_capsule': Cost(5.25, 'sample (paper_eval)',
                           'RESULTS, NTAT attacked: 17-18 min per 200 '
                           'samples, AVX-512 Intel Xeon'),
    'attack_pgd_l2': Cost(2.1, 'sample (pgd_l2_min)',
                          'RESULTS, NTAT attacked: about 7 min per 200 '
                          'samples, AVX-512 Intel Xeon'),
    # The campaign's first attack stage (RESULTS, the CPU campaign attacked:
    # HAT, PosK), each attack's folder from its settings to its last batch,
    # 200 samples, beside two helpers' tests on the same 2 cores.
    'attack_margin_cw': Cost(5.69, 'sample (paper_eval search on the margin)',
                             'RESULTS, the campaign attacked: 1137 s per 200 '
                             'samples, AVX-512 Intel Xeon, loaded'),
    'attack_ddn': Cost(0.21, 'sample (100 steps)',
                       'RESULTS, the campaign attacked: 42 s per 200 '
                       'samples, AVX-512 Intel Xeon, loaded'),
    'attack_fmn': Cost(0.40, 'sample (Foolbox FMN, 100 steps)',
                       'RESULTS, the campaign attacked: 79 s per 200 '
                       'samples, AVX-512 Intel Xeon, loaded'),
    'attack_sanity': Cost(0.23, 'sample (the sanity checks: PGD-L2 at the '
                          "box's diameter, the noise control, the reports)",
                          'RESULTS, the campaign attacked: 47 s per 200 '
                          'samples, AVX-512 Intel Xeon, loaded'),
}
#: The attacks of `attack='all'` whose whole-run cost is not measured yet.
UNMEASURED_ATTACKS = ()
