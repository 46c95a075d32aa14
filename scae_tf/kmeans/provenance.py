"""What a k-means classifier was fitted on, and the check that it suits the
checkpoint and data it is about to classify.

A k-means classifier is only meaningful on the features of the checkpoint
whose training features it clustered, preprocessed the same way: the
clusters of another checkpoint, or of resized digits applied to padded ones,
give plausible-looking but wrong predictions. `run/evaluate.py` records in
the classifier's metadata (`fitted_on`):

  checkpoint         the checkpoint prefix, relative to the k-means file's
                     folder (portable: `model` beside a shipped model;
                     files written before hold an absolute path);
  checkpoint_digest  sha256 of the checkpoint's `.index` file, which holds
                     the checksum of every tensor: a copy of the checkpoint
                     elsewhere keeps it, a change of any weight changes it;
  dataset, preprocess, config.

`check_fitted_on` compares them with what the attack uses.
"""

import hashlib
import os
from typing import Callable, List, Optional


class KMeansMismatchError(ValueError):
  """A k-means classifier fitted on another checkpoint or other data."""


def checkpoint_digest(prefix: str) -> Optional[str]:
  """The sha256 of `<prefix>.index`, or None without an index file (TF1
  checkpoints of the V1 format have none)."""
  index = f'{prefix}.index'
  if not os.path.isfile(index):
    return None
  with open(index, 'rb') as f:
    return hashlib.sha256(f.read()).hexdigest()


def fitted_on(prefix: str, dataset: str, preprocess: str, config: str,
              path: Optional[str] = None) -> dict:
  """The metadata entries that `check_fitted_on` reads; the checkpoint
  relative to the folder of the k-means file `path` (absolute without)."""
  checkpoint = os.path.abspath(prefix)
  if path is not None:
    checkpoint = os.path.relpath(checkpoint,
                                 os.path.dirname(os.path.abspath(path)))
  return dict(checkpoint=checkpoint,
              checkpoint_digest=checkpoint_digest(prefix), dataset=dataset,
              preprocess=preprocess, config=config)


def _checkpoint_mismatch(metadata: dict, prefix: str,
                         path: Optional[str]) -> Optional[str]:
  recorded = metadata.get('checkpoint')
  digest = metadata.get('checkpoint_digest')
  if recorded is None and digest is None:
    return None
  if recorded and path is not None:
    # Relative to the k-means file's folder (an absolute path stays).
    recorded = os.path.join(os.path.dirname(path), recorded)
  if digest is None and recorded and os.path.isfile(f'{recorded}.index'):
    # Files written before the digest was recorded: fingerprint the recorded
    # checkpoint now, if it is still there.
    digest = checkpoint_digest(recorded)
  ours = checkpoint_digest(prefix)
  if digest is not None and ours is not None:
    same = digest == ours
  else:
    same = (recorded is not None
            and os.path.realpath(recorded) == os.path.realpath(prefix))
  if same:
    return None
  short = lambda d: f' (weights digest {d[:12]})' if d else ''
  return (f'on checkpoint {recorded}{short(digest)}, not on the attacked '
          f'{os.path.abspath(prefix)}{short(ours)}')


def mismatches(metadata: dict, prefix: str, dataset: str,
               preprocess: str, path: Optional[str] = None) -> List[str]:
  """How the recorded checkpoint, dataset and preprocessing differ from
  these, in words (empty if they agree or were not recorded); `path`: the
  k-means file, against whose folder a relative checkpoint is read."""
  found = [_checkpoint_mismatch(metadata, prefix, path)]
  for key, value in (('dataset', dataset), ('preprocess', preprocess)):
    recorded = metadata.get(key)
    if recorded is not None and recorded != value:
      found.append(f'with {key} {recorded}, not {value}')
  return [m for m in found if m]


def check_fitted_on(clf, path: str, prefix: str, dataset: str,
                    preprocess: str, allow_mismatch: bool = False,
                    log: Optional[Callable[[str], None]] = None):
  """Refuses the k-means classifier `clf` (read from `path`) unless it was
  fitted on checkpoint `prefix`, `dataset` and `preprocess`.

  Raises:
    KMeansMismatchError: naming every difference, unless `allow_mismatch`;
      then they are logged as a warning.
  """
  log = log or (lambda msg: None)
  meta = clf.metadata
  if not any(meta.get(k) for k in ('checkpoint', 'checkpoint_digest',
                                    'dataset', 'preprocess')):
    log(f'warning: k-means file {path} records neither the checkpoint nor '
        'the data it was fitted on; it cannot be checked.')
    return
  found = mismatches(meta, prefix, dataset, preprocess, path)
  if not found:
    return
  what = f'k-means file {path} was fitted {"; and ".join(found)}'
  if allow_mismatch:
    log(f'warning: {what}; using it anyway (--allow_kmeans_mismatch).')
    return
  raise KMeansMismatchError(
      f'{what}. Fit one for this checkpoint with run/evaluate.py, or pass '
      '--allow_kmeans_mismatch to use it anyway.')
