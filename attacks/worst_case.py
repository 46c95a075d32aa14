"""The per-sample worst case over several attacks on the same samples.

Each attack gives a protocol amount per sample (`attacks.protocol`): 0 for
a clean error, inf for a failure, else the L2 of its success. A sample
survives a budget t only if EVERY attack needs more than t, so the
worst-case amount is the per-sample minimum, and its accuracy curve lies
below each attack's.

    merged = worst_case.merge({'capsule': l2_a, 'pgd_l2': l2_b})
    merged.l2        # [N] the smallest amount per sample
    merged.winner    # [N] index into merged.names; -1 where all failed
    merged.wins()    # {name: samples where it was the strongest}

Ties go to the attack listed first, so a clean error (0 for every attack)
is credited to the first one; `wins` counts only samples some attack broke.
"""

import dataclasses
from typing import Dict, Mapping, Tuple

import numpy as np

from attacks.protocol import accuracy_at
from attacks.protocol import summarize as summarize_amounts


@dataclasses.dataclass(frozen=True)
class WorstCase:
  """l2: [N] float64 minimum amount; winner: [N] int64 index of the attack
  that achieved it (-1 where every attack failed); names: the attacks."""
  l2: np.ndarray
  winner: np.ndarray
  names: Tuple[str, ...]

  def wins(self) -> Dict[str, int]:
    """{attack: samples broken (finite amount) where it was the
    strongest}."""
    return {name: int(np.sum(self.winner == i))
            for i, name in enumerate(self.names)}


def merge(amounts: Mapping[str, np.ndarray]) -> WorstCase:
  """The worst case of {attack name: [N] amounts} (see module doc)."""
  if not amounts:
    raise ValueError('merge needs the amounts of at least one attack.')
  names = tuple(amounts)
  table = [np.asarray(amounts[n], np.float64) for n in names]
  shape = table[0].shape
  for name, values in zip(names, table):
    if values.ndim != 1 or values.shape != shape:
      raise ValueError(f'{name}: expected amounts of shape {list(shape)} '
                       f'(one per sample, as the first attack), got '
                       f'{list(values.shape)}.')
    if np.isnan(values).any() or (values < 0).any():
      raise ValueError(f'{name}: amounts must be >= 0 or inf (no NaN).')
  stacked = np.stack(table)
  winner = np.argmin(stacked, axis=0).astype(np.int64)  # first of ties
  l2 = stacked.min(axis=0)
  return WorstCase(l2=l2, winner=np.where(np.isinf(l2), -1, winner),
                   names=names)


def strongest_by_threshold(amounts: Mapping[str, np.ndarray],
                           thresholds) -> str:
  """Which attack leaves the lowest accuracy, threshold by threshold, as
  runs 'a-b name' joined by '; ' ('tie' where the lowest is shared)."""
  names = tuple(amounts)
  curves = np.array([[accuracy_at(amounts[n], t) for t in thresholds]
                     for n in names])
  lowest = curves.min(axis=0)
  shared = (curves == lowest).sum(axis=0) > 1
  who = [('tie' if shared[i] else names[int(np.argmin(curves[:, i]))])
         for i in range(len(thresholds))]
  runs, start = [], 0
  for i in range(1, len(who) + 1):
    if i == len(who) or who[i] != who[start]:
      runs.append(f'{thresholds[start]:g}-{thresholds[i - 1]:g} {who[start]}')
      start = i
  return '; '.join(runs)


def summarize(merged: WorstCase, amounts: Mapping[str, np.ndarray],
              clean_correct, threshold: float, max_threshold: float) -> dict:
  """The numbers of `worst_case.json`: the worst case's protocol summary
  (`attacks.protocol.summarize`), each attack's accuracy at the threshold
  and its wins, the strongest attack at the threshold and along the curve,
  and on how many samples each later attack needs less than the first (the
  paper's attack when it is listed first)."""
  summary = summarize_amounts(merged.l2, clean_correct, threshold)
  first = merged.names[0]
  for name in merged.names:
    summary[f'{name}_accuracy_at_threshold'] = accuracy_at(amounts[name],
                                                           threshold)
  for name, wins in merged.wins().items():
    summary[f'{name}_wins'] = wins
  at_t = {n: summary[f'{n}_accuracy_at_threshold'] for n in merged.names}
  lowest = min(at_t.values())
  strongest = [n for n in merged.names if at_t[n] == lowest]
  summary['strongest_at_threshold'] = (
      strongest[0] if len(strongest) == 1 else 'tie: ' + ', '.join(strongest))
  grid = np.round(np.arange(int(round(max_threshold / .25)) + 1) * .25, 10)
  summary['strongest_by_threshold'] = strongest_by_threshold(amounts, grid)
  for name in merged.names[1:]:
    smaller = np.asarray(amounts[name], np.float64) < np.asarray(
        amounts[first], np.float64)
    summary[f'{name}_smaller_than_{first}'] = int(smaller.sum())
  return summary
