"""What the attack tests that stop a run and resume it share: a tiny PosK
checkpoint to attack, and the comparison of an attack folder's files with
those of a run never stopped."""

import os

import numpy as np
import tensorflow as tf

from scae_tf import checkpoints
from scae_tf import configs
from scae_tf import kmeans
from scae_tf import loading
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE
from scae_tf import run_folder


def tiny_posk_checkpoint(folder) -> str:
  """A tiny 40x40 SCAE saved in `folder` with a PosK k-means file beside
  it; returns its prefix."""
  tf.random.set_seed(0)
  prefix = checkpoints.save_tf2_checkpoint(
      SCAE(configs.tiny_config(canvas_size=40)), str(folder / 'tiny'))
  KMeansClassifier(
      centers=np.eye(3, dtype=np.float32), metric='cosine',
      feature='posterior', cluster_to_label=[3, 1, 7],
      metadata=kmeans.fitted_on(prefix, 'mnist', 'resize', 'tiny')).save(
          loading.kmeans_path(prefix, 'posterior'))
  return prefix


def outputs(out_dir):
  """{path in out_dir: its bytes, or {name: array} for an .npz}; the folder
  locks (which hold the pid of the last run) are no output."""
  found = {}
  for folder, _, names in os.walk(out_dir):
    for name in names:
      if name == run_folder.LOCK_FILE:
        continue
      path = os.path.join(folder, name)
      if name.endswith('.npz'):
        with np.load(path) as z:
          content = {k: z[k] for k in z.files}
      else:
        with open(path, 'rb') as f:
          content = f.read()
      found[os.path.relpath(path, out_dir)] = content
  return found


def assert_same_outputs(out_dir, expected):
  got = outputs(out_dir)
  assert sorted(got) == sorted(expected)  # no unfinished write left either
  for path, content in expected.items():
    if isinstance(content, dict):
      assert sorted(got[path]) == sorted(content), path
      for name, array in content.items():
        np.testing.assert_array_equal(got[path][name], array, strict=True,
                                      err_msg=f'{path}: {name}')
    else:
      assert got[path] == content, path
