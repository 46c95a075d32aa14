"""scae_tf: the Stacked Capsule Autoencoder in TensorFlow 2 (`capsules/`),
and its services: configs, data, checkpoints, loading, training, k-means.

The model's modules live in `scae_tf.capsules`. Their old paths, from when
they sat at the top of this package, stay importable as aliases of the same
module objects: `import scae_tf.model`, `from scae_tf import model` and
`from scae_tf.model import SCAE` all give `scae_tf.capsules.model`. The
aliases are resolved on first use, so `import scae_tf` loads no TensorFlow
(the scripts check their flags before it loads).
"""

import importlib
import importlib.abc
import importlib.util
import sys

# Old module path under scae_tf -> its module in scae_tf.capsules.
MOVED = ('likelihoods', 'losses', 'math_ops', 'model', 'neural', 'objects',
         'parts', 'resampler', 'set_transformer', 'warping')
_NEW_PACKAGE = __name__ + '.capsules'


class _AliasLoader(importlib.abc.Loader):
  """Loads an old path as the module object of its new path."""

  def __init__(self, target):
    self._target = target
    self._spec = None

  def create_module(self, spec):
    module = importlib.import_module(self._target)
    self._spec = module.__spec__
    return module

  def exec_module(self, module):
    # The import system has just set the alias's spec on the module: give it
    # back its own, so that it still names its real place.
    module.__spec__ = self._spec


class _AliasFinder(importlib.abc.MetaPathFinder):
  """Finds `scae_tf.<old>` for each moved module."""

  def find_spec(self, fullname, path=None, target=None):
    package, _, name = fullname.rpartition('.')
    if package != __name__ or name not in MOVED:
      return None
    return importlib.util.spec_from_loader(
        fullname, _AliasLoader(f'{_NEW_PACKAGE}.{name}'))


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
  sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name):
  """`scae_tf.model` etc. before anything imported them."""
  if name in MOVED:
    return importlib.import_module(f'{__name__}.{name}')
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
