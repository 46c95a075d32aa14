"""The port against the ORIGINAL TF1 code: load its checkpoints, feed its fixed
batch, and compare every output and gradient it recorded.

Tolerances are those of `shared/reference/README.md`, i.e. what the original
meets against itself across kernel variants. When a test fails, fix the port.
"""

import numpy as np
import pytest
import tensorflow as tf

from conftest import reference_path
from scae_tf import checkpoints
from scae_tf import configs
from scae_tf.capsules.model import SCAE

pytestmark = pytest.mark.fixtures

# name -> (checkpoint, outputs, element-wise gradient atol as a fraction of
#          max|g|, rtol on gradient norms); README / traj README values.
FIXTURES = {
    'init': ('scae_mnist_init/model.ckpt', 'scae_mnist_init/outputs.npz',
             5e-5, 1e-3),
    'trained': ('scae_mnist_trained/model.ckpt',
                'scae_mnist_trained/outputs.npz', 5e-5, 1e-3),
    'traj_step300': ('scae_mnist_traj/step_0300/model.ckpt',
                     'scae_mnist_traj/outputs_step300.npz', 1e-3, 1e-4),
}
# Outputs that are an argmax choice: compared exactly.
DISCRETE = ('res/is_from_capsule', 'res/prior_cls_pred',
            'res/posterior_cls_pred', 'res/rec_mode', 'res/bottom_up_rec/mode',
            'res/top_down_rec/mode', 'res/top_down_per_caps_rec/mode',
            'res/vote_presence')
# Of these, some hold ONE value in every fixture set, so matching them
# exactly proves little: every vote beats the dummy (vote_presence is all
# ones); the background wins every pixel (the rec modes are all
# sigmoid(bg_value), because templates_alpha starts at 0, see the
# reference README); the prior probe predicts one class for all eight
# digits (7, 1, 7). `test_informative_discrete_outputs` checks what varies.
CONSTANT_IN_EVERY_SET = ('res/vote_presence', 'res/rec_mode',
                         'res/bottom_up_rec/mode', 'res/top_down_rec/mode',
                         'res/top_down_per_caps_rec/mode',
                         'res/prior_cls_pred')
# Distinct values of the informative discrete outputs in each set: the
# posterior probe predicts one class at init (2), five after training.
DISTINCT_VALUES = {
    'init': {'res/is_from_capsule': 15, 'res/posterior_cls_pred': 1},
    'trained': {'res/is_from_capsule': 19, 'res/posterior_cls_pred': 5},
    'traj_step300': {'res/is_from_capsule': 12,
                     'res/posterior_cls_pred': 2},
}
# Port outputs that no fixture key holds: the original's fixtures keep only
# the 0/1 vote presence and the mode of the per-capsule rendering.
PORT_ONLY = ('vote_presence_prob',
             'top_down_per_caps_rec/transformed_templates',
             'top_down_per_caps_rec/mixing_logits')


# Upstream's names that the port keeps as aliases of a field stored under
# another name; the fixtures' values are read through the aliases.
ALIASES = {'res/primary_presence': 'part/presence',
           'res/template_pres': 'part/presence'}


def port_value(out, loss, key):
  """The port's counterpart of a fixture key (`part/...`, `res/...`)."""
  if key == 'loss':
    return loss
  group, _, name = key.partition('/')
  if group == 'part':
    return getattr(out.part, name)
  value = out
  for attr in name.split('/'):
    value = getattr(value, attr)
  return value


@pytest.fixture(scope='module', params=sorted(FIXTURES))
def run(request):
  ckpt, outputs, grad_atol, norm_rtol = FIXTURES[request.param]
  ref = dict(np.load(reference_path(outputs)))
  model = SCAE(configs.MNIST.without_noise())
  report = checkpoints.load_tf1_checkpoint(model, str(reference_path(ckpt)))
  assert report['n_tensors'] == 97 and report['n_params'] == 2_420_351

  with tf.GradientTape() as tape:
    out = model(ref['input/images'], ref['input/labels'], full=True)
    loss = model.loss(out)
  var_map = checkpoints.tf1_variable_map(model)
  names = sorted(k[len('grad/SCAE/'):] for k in ref if k.startswith('grad/'))
  all_vars = list(var_map.values())
  grads = tape.gradient(loss, [var_map[n] for n in names] + all_vars)
  port = {k: np.asarray(port_value(out, loss, k)) for k in ref
          if k.startswith(('part/', 'res/')) or k == 'loss'}
  port.update({f'grad/SCAE/{n}': np.asarray(g)
               for n, g in zip(names, grads)})
  port['grad_global_norm'] = tf.linalg.global_norm(
      [g for g in grads[len(names):] if g is not None]).numpy()
  return dict(name=request.param, ref=ref, port=port, out=out,
              grad_atol=grad_atol, norm_rtol=norm_rtol)


def _outputs(port):
  return [k for k in port if k.startswith(('part/', 'res/')) or k == 'loss']


def _mismatches(pairs, rtol, atol):
  bad = []
  for key, got, want in pairs:
    if got.shape != want.shape:
      bad.append(f'{key}: shape {got.shape} != {want.shape}')
      continue
    err = np.abs(got.astype(np.float64) - want)
    limit = atol + rtol * np.abs(want)
    if not np.all(err <= limit):
      worst = np.argmax(err - limit)
      bad.append(f'{key}: max |diff| {err.max():.3g}, worst at {worst} '
                 f'({got.flat[worst]!r} vs {want.flat[worst]!r})')
  return bad


def _port_fields(out):
  """Names of the port's output tensors: `part/x`, `x`, `rendering/x`."""
  names = []
  for field, value in zip(out._fields, out):
    if field == 'part':
      names += [f'part/{f}' for f in value._fields]
    elif hasattr(value, '_fields'):
      names += [f'{field}/{f}' for f in value._fields]
    elif value is not None:
      names.append(field)
  return names


def test_fixture_keys_cover_the_port_outputs(run):
  """Every output of the port is compared with the original's value, except
  PORT_ONLY; every fixture key resolves to a port tensor of its shape."""
  ref, port = run['ref'], run['port']
  covered = set()
  for key in _outputs(port):
    if key != 'loss':
      name = ALIASES.get(key, key)
      covered.add(name if name.startswith('part/') else name[len('res/'):])
  fields = _port_fields(run['out'])
  assert len(fields) == 55
  assert sorted(set(fields) - covered) == sorted(PORT_ONLY)
  assert not covered - set(fields)
  bad = [k for k in _outputs(port) if port[k].shape != ref[k].shape]
  assert not bad, bad


def test_scalars(run):
  ref, port = run['ref'], run['port']
  keys = [k for k in _outputs(port) if ref[k].ndim == 0 and k not in DISCRETE]
  assert 'loss' in keys and 'res/rec_ll' in keys and 'res/log_prob' in keys
  bad = _mismatches(((k, port[k], ref[k]) for k in keys), rtol=1e-5,
                    atol=1e-7)
  assert not bad, '\n'.join(bad)


def test_forward_tensors(run):
  ref, port = run['ref'], run['port']
  keys = [k for k in _outputs(port) if ref[k].ndim > 0 and k not in DISCRETE]
  assert len(keys) >= 32
  bad = _mismatches(((k, port[k], ref[k]) for k in keys), rtol=1e-4,
                    atol=5e-5)
  assert not bad, '\n'.join(bad)


def test_discrete_outputs_exact(run):
  ref, port = run['ref'], run['port']
  bad = [k for k in DISCRETE if not np.array_equal(port[k], ref[k])]
  assert not bad, bad
  for key in CONSTANT_IN_EVERY_SET:  # as the comment above says
    assert np.unique(ref[key]).size == 1, key


def test_informative_discrete_outputs(run):
  """The discrete outputs that vary: which capsule explains each part, the
  posterior probe's predictions, and the order of both probes' logits
  (informative even where the argmax is one class)."""
  ref, port = run['ref'], run['port']
  for key, distinct in DISTINCT_VALUES[run['name']].items():
    assert np.unique(ref[key]).size == distinct, key
    np.testing.assert_array_equal(port[key], ref[key], err_msg=key)
  for key in ('res/prior_cls_logits', 'res/posterior_cls_logits'):
    want, got = ref[key], port[key]
    # Pairs of classes whose logits differ by more than twice the forward
    # tolerance must come in the same order.
    margin = 2 * (5e-5 + 1e-4 * np.abs(want).max())
    gap = want[:, :, None] - want[:, None, :]
    ordered = np.abs(gap) > margin
    assert ordered.sum() >= 0.9 * ordered.size - 8 * 10, key  # most pairs
    same = np.sign(got[:, :, None] - got[:, None, :]) == np.sign(gap)
    assert same[ordered].all(), key


def test_gradients(run):
  ref, port = run['ref'], run['port']
  keys = [k for k in ref if k.startswith('grad/')]
  assert len(keys) == 15
  bad = []
  for key in keys:
    name = key[len('grad/'):]
    got, want = port[key], ref[key]
    if name.endswith('inducing_points'):
      # The 1e32 float mask makes this gradient (almost) exactly zero; only
      # its size is meaningful across kernels.
      if np.linalg.norm(got) > 1e-3:
        bad.append(f'{name}: norm {np.linalg.norm(got)} > 1e-3')
      continue
    bad += _mismatches([(key, got, want)], rtol=1e-4,
                       atol=run['grad_atol'] * np.abs(want).max())
    norm, want_norm = np.linalg.norm(got), float(ref['grad_norm/' + name])
    if abs(norm - want_norm) > run['norm_rtol'] * want_norm:
      bad.append(f'{name}: norm {norm} vs {want_norm}')
  global_norm = float(ref['grad_global_norm'])
  if abs(port['grad_global_norm'] - global_norm) > 1e-3 * global_norm:
    bad.append(f'global norm {port["grad_global_norm"]} vs {global_norm}')
  assert not bad, '\n'.join(bad)
