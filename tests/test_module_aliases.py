"""The model's modules moved to scae_tf.capsules; their old paths
(`scae_tf.model`, `scae_tf.parts`, ...) stay importable, as the very same
module objects, with no file left at the old place (scae_tf/__init__.py).

Each order of first import runs in a fresh interpreter, since whichever
path comes first is the one that loads the module.
"""

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

import scae_tf
from scae_tf import capsules

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    filter(None, (str(REPO), os.environ.get('PYTHONPATH')))))

# Each way of reaching a module; `{old}` is scae_tf.<name>, `{new}`
# scae_tf.capsules.<name>. Every statement binds the module to `m`.
WAYS = {
    'import old': 'import {old}; m = sys.modules["{old}"]',
    'from scae_tf import': 'from scae_tf import {name} as m',
    'attribute': 'import scae_tf; m = scae_tf.{name}',
    'import new': 'import {new}; m = sys.modules["{new}"]',
    'from capsules import': 'from scae_tf.capsules import {name} as m',
}

# Run in a fresh interpreter: reach every moved module each way, `first`
# first, and print what each way gave.
PROBE = '''
import importlib, json, sys
import scae_tf
assert 'tensorflow' not in sys.modules, 'import scae_tf loaded tensorflow'
ways = json.loads(sys.argv[1])
first = sys.argv[2]
order = [first] + [w for w in ways if w != first]
out = {}
for name in scae_tf.MOVED:
  old, new = 'scae_tf.' + name, 'scae_tf.capsules.' + name
  got = {}
  for way in order:
    scope = {'sys': sys}
    exec(ways[way].format(old=old, new=new, name=name), scope)
    got[way] = scope['m']
  m = got[first]
  out[name] = {
      'same': all(g is m for g in got.values()),
      'sys.modules': sys.modules[old] is m and sys.modules[new] is m,
      'attributes': scae_tf.__dict__[name] is m and
                    scae_tf.capsules.__dict__[name] is m,
      'name': m.__name__, 'spec': m.__spec__.name,
      'file': m.__file__.replace(chr(92), '/').split('scae_tf/')[-1],
  }
print(json.dumps(out))
'''


def _moved_files():
  return sorted(p.stem for p in (REPO / 'scae_tf' / 'capsules').glob('*.py')
                if p.stem != '__init__')


def test_every_model_module_is_aliased_and_no_shim_is_left():
  assert sorted(scae_tf.MOVED) == _moved_files()
  for name in scae_tf.MOVED:
    assert not (REPO / 'scae_tf' / f'{name}.py').exists(), name
    assert not (REPO / 'scae_tf' / name).exists(), name


# A fresh interpreter with TensorFlow each (about 8 s). Two ways share the
# path of another: `from scae_tf import <name>` goes through the package's
# __getattr__ as the attribute does, and `from scae_tf.capsules import
# <name>` is the plain import of the new path. Those two run with the slow
# ones; covered by default: [attribute] and [import new].
SAME_PATH_AS = {'from scae_tf import': 'attribute',
                'from capsules import': 'import new'}


@pytest.mark.parametrize('first', [
    pytest.param(w, marks=pytest.mark.slow) if w in SAME_PATH_AS else w
    for w in sorted(WAYS)])
def test_old_and_new_paths_are_the_same_module(first):
  result = subprocess.run(
      [sys.executable, '-c', PROBE, json.dumps(WAYS), first],
      env=ENV, capture_output=True, text=True, check=False, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert sorted(out) == sorted(scae_tf.MOVED)
  for name, got in out.items():
    assert got == {
        'same': True, 'sys.modules': True, 'attributes': True,
        'name': f'scae_tf.capsules.{name}',
        'spec': f'scae_tf.capsules.{name}',
        'file': f'capsules/{name}.py'}, name


def test_in_this_process_too():
  # pylint: disable=g-import-not-at-top,import-outside-toplevel
  import scae_tf.model
  from scae_tf import parts
  from scae_tf.model import SCAE
  from scae_tf.capsules import model
  from scae_tf.capsules.parts import PartEncoder
  assert scae_tf.model is model is sys.modules['scae_tf.model']
  assert parts is capsules.parts is sys.modules['scae_tf.parts']
  assert SCAE is model.SCAE and PartEncoder is parts.PartEncoder
  assert SCAE.__module__ == 'scae_tf.capsules.model'


def test_unknown_names_still_fail():
  with pytest.raises(AttributeError):
    scae_tf.no_such_module  # pylint: disable=pointless-statement
  with pytest.raises(ModuleNotFoundError):
    __import__('scae_tf.no_such_module')
