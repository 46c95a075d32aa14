"""The features k-means clusters: object-capsule presences of the SCAE.

`collect_features` runs the model (compiled, no noise) over images and
gathers both kinds per image:

* `prior`: the prior object-capsule presence probabilities
  (`ScaeOutput.caps_presence_prob`, [N, K]);
* `posterior`: the posterior mixing probabilities summed over the parts
  (`ScaeOutput.posterior_presence`, [N, K]);

plus the linear probes' predictions, which the report scores beside k-means.
"""

import weakref
from typing import Dict, Optional

import numpy as np
import tensorflow as tf

FEATURE_KINDS = ('prior', 'posterior')

_FEATURE_FNS = weakref.WeakKeyDictionary()


def _feature_fn(model):
  """A compiled forward pass (full=False, no noise) returning the features."""
  fn = _FEATURE_FNS.get(model)
  if fn is None:
    c = model.config
    spec = tf.TensorSpec([None, c.canvas_size, c.canvas_size, c.n_channels],
                         tf.float32)

    @tf.function(input_signature=[spec])
    def fn(images):
      out = model.forward(images, full=False, training=False)
      return dict(prior=out.caps_presence_prob,
                  posterior=out.posterior_presence,
                  prior_probe_pred=out.prior_cls_pred,
                  posterior_probe_pred=out.posterior_cls_pred)

    _FEATURE_FNS[model] = fn
  return fn


def _check_batch(images, config):
  images = np.asarray(images)
  want = (config.canvas_size, config.canvas_size, config.n_channels)
  if images.ndim != 4 or tuple(images.shape[1:]) != want:
    raise ValueError(f'Expected images of shape [N, {want[0]}, {want[1]}, '
                     f'{want[2]}] for config {config.name!r}, got '
                     f'{list(images.shape)}.')
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f'Expected float images in [0, 1], got dtype '
                     f'{images.dtype}; preprocess them first '
                     '(scae_tf.data).')
  return images.astype(np.float32, copy=False)


def _batches(images, batch_size):
  """Yields (images, labels or None) from an array or an iterable."""
  if isinstance(images, (np.ndarray, tf.Tensor)):
    images = np.asarray(images)
    for start in range(0, len(images), batch_size):
      yield images[start:start + batch_size], None
    return
  for item in images:
    if isinstance(item, (tuple, list)):
      if len(item) != 2:
        raise ValueError('An iterable of batches must yield image arrays or '
                         f'(images, labels) pairs, got {len(item)} items.')
      yield np.asarray(item[0]), np.asarray(item[1])
    else:
      yield np.asarray(item), None


def collect_features(model, images, batch_size: int = 500,
                     progress: bool = False, desc: str = 'features',
                     total: Optional[int] = None) -> Dict[str, np.ndarray]:
  """Runs the SCAE (compiled, full=False, no noise) and gathers its features.

  Args:
    model: a `scae_tf.capsules.model.SCAE` (weights loaded).
    images: float images in [0, 1], [N, H, W, C] (split into batches of
      `batch_size`), or an iterable of such batches or of (images, labels)
      pairs (then the labels are returned too).
    batch_size: batch size when `images` is an array.
    progress: show a tqdm progress bar (on stderr).
    desc: the progress bar's label.
    total: number of images, for the progress bar of an iterable.

  Returns:
    dict(prior=[N, K] float32, posterior=[N, K] float32,
    prior_probe_pred=[N] int64, posterior_probe_pred=[N] int64), plus
    labels=[N] int64 if the iterable yielded labels.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  fn = _feature_fn(model)
  if isinstance(images, (np.ndarray, tf.Tensor)):
    total = len(images)
  bar = None
  if progress:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    bar = tqdm(total=total, desc=desc, unit='img', dynamic_ncols=True)
  keys = ('prior', 'posterior', 'prior_probe_pred', 'posterior_probe_pred')
  parts = {k: [] for k in keys}
  labels = []
  try:
    for batch, batch_labels in _batches(images, batch_size):
      batch = _check_batch(batch, model.config)
      out = fn(tf.constant(batch))
      for k in keys:
        parts[k].append(out[k].numpy())
      if batch_labels is not None:
        labels.append(batch_labels)
      if bar is not None:
        bar.update(len(batch))
  finally:
    if bar is not None:
      bar.close()
  if not parts['prior']:
    raise ValueError('No images to collect features from.')
  n_caps = model.config.n_obj_caps
  res = dict(
      prior=np.concatenate(parts['prior']).astype(np.float32),
      posterior=np.concatenate(parts['posterior']).astype(np.float32),
      prior_probe_pred=np.concatenate(parts['prior_probe_pred']).astype(
          np.int64),
      posterior_probe_pred=np.concatenate(
          parts['posterior_probe_pred']).astype(np.int64))
  assert res['prior'].shape[1] == n_caps, res['prior'].shape
  if labels:
    if len(labels) != len(parts['prior']):
      raise ValueError('Some batches came with labels and some without.')
    res['labels'] = np.concatenate(labels).astype(np.int64)
  return res
