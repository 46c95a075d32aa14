"""The PyTorch port (bdsaglam/torch-scae) timed beside ours (issue 21, item 3).

  pip install torch monty   # the port's imports; not dependencies of ours
  git clone https://github.com/bdsaglam/torch-scae /tmp/torch-scae
  python benchmarks/torch_reference.py --torch_scae=/tmp/torch-scae

The port is read from its checkout (`--torch_scae`), never copied here.
Without torch, or without an importable checkout, the script says in one
line what is missing and exits with status 1.

Both models are built at our MNIST config's sizes (`scae_tf.configs.MNIST`:
40 x 40 input, its part and object capsule counts, template size, CNN,
Set Transformer and capsule MLP widths), fresh weights, the same random
images, batch --batch_size, on the CPU of this process. Timed alternately
in --rounds rounds after a warm-up (`timing.alternating_times`: every
other round in reverse order), median and min:

* training step: ours is `make_train_step` with the config's noise and the
  TF1 RMSProp of the config's recipe (what training runs; `step_costs.py`'s
  train_step); the port's is its Lightning `training_step` without
  Lightning: forward in training mode, `SCAE.loss` with the labels,
  backward, and the RMSProp of its experiment (momentum .9, epsilon
  1e-2 / batch^2, our recipe's learning rate).
* attack iteration: --inner iterations of the paper_train attack on the
  posterior capsule presences (target PosL; `attacks/objectives.py`), per
  call, divided by --inner. Ours is the attack's own compiled loop
  (`CapsuleAttack._outer`, as in `step_costs.py`); the port's is the same
  loop written here in torch on its public forward pass (`SCAE.forward`,
  eval mode, no presence noise): x' = (tanh(w + mask * p') + 1) / 2, the
  port's forward pass, the capsule loss 0.5 sum_S f^2 / P^2 of its
  posterior masses on the clean pass's subset S, the perturbation loss,
  the fork's batch coupling of alpha (100), the gradient of p' alone, the
  success bookkeeping and the signed step; then the test pass of the last
  step. The port's forward also renders the templates (its decoder has no
  lean path); that is its cost as a user of the port would pay it.

The port runs at each of --torch_threads thread counts (default 1 and the
logical cores, all of which TensorFlow uses): on a busy machine one torch
thread can beat two (2-core Xeon beside a training run and two test runs:
0.53 s against 1.14 s a training step), so the bold ratio is against the
port's fastest median. Prints the CPU's model name, the torch and
TensorFlow versions, and the port / ours ratios of the medians and of the
mins.
"""

import importlib
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# torch's OpenMP threads spin at their barriers by default: on a busy
# machine, where a sibling thread is often descheduled, the port's training
# step took 8 to 12 s with 2 threads instead of 1.1 s (2-core Xeon beside a
# training run and two test runs). Passive waiting, as TensorFlow's thread
# pools do, unless the caller set otherwise (before torch is imported).
os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  """The script's flags (defined when it runs, not when a test imports it:
  the benchmarks share absl's global flags)."""
  flags.DEFINE_string('torch_scae', None, 'Path of a checkout of '
                      'https://github.com/bdsaglam/torch-scae.')
  flags.DEFINE_integer('batch_size', 100, 'Images per step.')
  flags.DEFINE_integer('rounds', 5, 'Timed rounds of each of the four calls.')
  flags.DEFINE_integer('inner', 10, 'Attack iterations per timed call.')
  flags.DEFINE_list('torch_threads', None, 'torch intra-op thread counts, '
                    'each timed (default: 1 and the logical cores, which '
                    'TensorFlow uses; the ratios are against the port\'s '
                    'fastest).')


#: The port's RMSProp epsilon is 1e-2 / batch^2 (its base_experiment.py).
PORT_EPSILON_NUMERATOR = 1e-2


def missing(checkout):
  """One line saying what keeps the port from running here, or None."""
  try:
    importlib.import_module('torch')
  except ImportError as e:
    return (f'torch is not installed ({e}); pip install torch (CPU wheel) '
            'to time the PyTorch port.')
  if not checkout:
    return ('no checkout of the port given: --torch_scae=<path of a clone '
            'of https://github.com/bdsaglam/torch-scae>.')
  factory = os.path.join(checkout, 'torch_scae', 'factory.py')
  if not os.path.isfile(factory):
    return (f'no torch-scae checkout at {checkout} ({factory} is missing); '
            'clone https://github.com/bdsaglam/torch-scae there.')
  try:
    port_modules(checkout)
  except ImportError as e:
    return (f'the torch-scae checkout at {checkout} does not import: {e} '
            '(the port needs torch and monty).')
  return None


def port_modules(checkout):
  """The port's `torch_scae.factory` module, imported from its checkout,
  made to run on today's torch (`SplitCopies`)."""
  path = os.path.abspath(checkout)
  if path not in sys.path:
    sys.path.insert(0, path)
  factory = importlib.import_module('torch_scae.factory')
  cv_ops = importlib.import_module('torch_scae.cv_ops')
  if not isinstance(cv_ops.torch, SplitCopies):
    cv_ops.torch = SplitCopies(cv_ops.torch)
  return factory


class SplitCopies:
  """torch, but `split` returns copies: the port (written for torch 1.4)
  scales a `torch.split` output in place in `cv_ops.geometric_transform`
  (`theta *= 2. * math.pi`), which torch >= 1.7 refuses for views. The
  copies are [..., 1] slices of the poses: microseconds a call."""

  def __init__(self, torch):
    self._torch = torch

  def __getattr__(self, name):
    return getattr(self._torch, name)

  def split(self, *args, **kwargs):
    return tuple(t.clone() for t in self._torch.split(*args, **kwargs))


#: The port's colour nonlinearity. Its 'relu1' adds .99 in place to a ReLU
#: output that the backward pass needs, which torch >= 1.5 refuses; its own
#: MNIST config uses 'sigmoid', one elementwise op on [B, P, C] like relu1.
PORT_COLOR_NONLIN = 'sigmoid'


#: The loss settings the port names as we do.
SAME_LOSS_FIELDS = (
    'caps_ll_weight', 'prior_sparsity_loss_type',
    'prior_within_example_sparsity_weight',
    'prior_between_example_sparsity_weight', 'prior_within_example_constant',
    'posterior_sparsity_loss_type', 'posterior_within_example_sparsity_weight',
    'posterior_between_example_sparsity_weight')


def port_params(config, noise=True):
  """The port's `make_scae` parameters at the sizes of our `config`
  (`noise=False`: no presence noise, as our attacks run), with the port's
  own colour nonlinearity (`PORT_COLOR_NONLIN`)."""
  c = config if noise else config.without_noise()
  n_layers = len(c.part_cnn_channels)
  return dict(
      image_shape=(c.n_channels, c.canvas_size, c.canvas_size),
      n_classes=c.num_classes,
      n_part_caps=c.n_part_caps,
      n_obj_caps=c.n_obj_caps,
      pcae_cnn_encoder_params=dict(
          out_channels=list(c.part_cnn_channels), kernel_sizes=[3] * n_layers,
          strides=list(c.part_cnn_strides), activate_final=True),
      pcae_encoder_params=dict(
          n_poses=c.n_part_caps_dims,
          n_special_features=c.n_part_special_features,
          noise_scale=c.part_encoder_noise_scale,
          similarity_transform=False),
      pcae_template_generator_params=dict(
          template_size=(c.template_size, c.template_size),
          template_nonlin=c.template_nonlin, color_nonlin=PORT_COLOR_NONLIN,
          colorize_templates=c.colorize_templates),
      pcae_decoder_params=dict(
          learn_output_scale=False, use_alpha_channel=c.use_alpha_channel,
          background_value=True),
      ocae_encoder_set_transformer_params=dict(
          n_layers=c.set_transformer_n_layers,
          n_heads=c.set_transformer_n_heads,
          dim_hidden=c.set_transformer_n_dims,
          dim_out=c.set_transformer_n_output_dims, layer_norm=True),
      ocae_decoder_capsule_params=dict(
          dim_caps=c.n_obj_caps_params, hidden_sizes=(c.obj_caps_n_hiddens,),
          caps_dropout_rate=0., learn_vote_scale=True,
          allow_deformations=True, noise_type=c.obj_decoder_noise_type,
          noise_scale=c.obj_decoder_noise_scale, similarity_transform=False),
      scae_params=dict(
          vote_type=c.vote_type, presence_type=c.pres_type,
          stop_grad_caps_input=c.stop_grad_caps_inpt,
          stop_grad_caps_target=c.stop_grad_caps_target,
          cpr_dynamic_reg_weight=c.dynamic_l2_weight,
          **{name: getattr(c, name) for name in SAME_LOSS_FIELDS},
          reconstruct_alternatives=False),
  )


def port_train_step(model, learning_rate, batch_size):
  """The port's training step without Lightning: step(images [B, C, H, W],
  labels [B]) -> loss."""
  import torch  # pylint: disable=g-import-not-at-top
  model.train()
  optimizer = torch.optim.RMSprop(
      model.parameters(), lr=learning_rate, momentum=.9,
      eps=PORT_EPSILON_NUMERATOR / float(batch_size) ** 2)

  def step(images, labels):
    res = model(images)
    loss, _ = model.loss(res, reconstruction_target=images, label=labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()
  return step


def port_objective(model, p, w, mask, x, subset, const, n_part_caps):
  """The paper_train attack's objective on the port at p' (torch, NCHW):
  (scalar loss, posterior masses [B, K], PosL predictions [B], x' [B, C, H,
  W], capsule losses [B], perturbation losses [B]), as `attacks.objectives`
  computes them: the squared capsule loss of the posterior masses / P^2 on
  the subset S, 0.5 ||x' - x||^2, alpha coupled over the batch ('batch')."""
  import torch  # pylint: disable=g-import-not-at-top
  x_adv = 0.5 * (torch.tanh(w + mask * p) + 1.)
  res = model(x_adv)
  # The port's posterior_mixing_prob is [B, K, P]: the masses sum the parts.
  features = res.posterior_mixing_prob.sum(-1)
  pred = res.posterior_cls_prob.argmax(-1)
  p_loss = 0.5 * ((x_adv - x) ** 2).sum((1, 2, 3))
  c_loss = 0.5 * ((features * subset) ** 2).sum(-1) / float(n_part_caps) ** 2
  loss = const.sum() * c_loss.sum() + x.shape[0] * p_loss.sum()
  return loss, features, pred, x_adv, c_loss, p_loss


def port_attack(model, n_part_caps, learning_rate=1.):
  """outer(x, w, mask, subset, target, const, p, steps) -> (best L2 [B],
  best image, hit [B]): `steps` signed steps of the port's attack loop from
  p, each scoring the previous step with its forward pass as our compiled
  loop does, then the test pass of the last step."""
  import torch  # pylint: disable=g-import-not-at-top
  model.eval()

  def outer(x, w, mask, subset, target, const, p, steps):
    best_l2 = torch.full((x.shape[0],), float('inf'))
    best_img = torch.zeros_like(x)
    hit = torch.zeros(x.shape[0], dtype=torch.bool)

    def record(active, x_adv, pred, p_loss):
      l2 = torch.sqrt(2. * p_loss)
      ok = active & (pred != target) & torch.isfinite(l2)
      better = ok & (l2 < best_l2)
      return (hit | ok, torch.where(better, l2, best_l2),
              torch.where(better[:, None, None, None], x_adv, best_img))

    for j in range(steps):
      p = p.detach().requires_grad_(True)
      loss, _, pred, x_adv, _, p_loss = port_objective(
          model, p, w, mask, x, subset, const, n_part_caps)
      grad, = torch.autograd.grad(loss, p)
      with torch.no_grad():
        hit, best_l2, best_img = record(j > 0, x_adv, pred, p_loss)
        p = p - learning_rate * grad.sign()
    with torch.no_grad():
      _, _, pred, x_adv, _, p_loss = port_objective(
          model, p, w, mask, x, subset, const, n_part_caps)
      hit, best_l2, best_img = record(True, x_adv, pred, p_loss)
    return best_l2, best_img, hit
  return outer


def port_attack_inputs(model, images, const_init, seed=0):
  """(x, w, mask, subset, const, p) in torch NCHW for `port_attack`, from
  images [B, H, W, C] (TF): the blur mask and tanh map of
  `attacks.objectives`, the subset S from the port's clean pass."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from attacks import objectives  # pylint: disable=g-import-not-at-top
  nchw = lambda t: torch.from_numpy(np.array(
      np.transpose(np.asarray(t), (0, 3, 1, 2)), np.float32, order='C'))
  x = nchw(images)
  w = nchw(objectives.to_tanh_space(images))
  mask = nchw(objectives.blur_mask(images))
  model.eval()
  with torch.no_grad():
    clean = model(x).posterior_mixing_prob.sum(-1)
  subset = (clean > clean.mean()).float()
  const = torch.full((x.shape[0],), float(const_init))
  p = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
  return x, w, mask, subset, const, p


def main(argv):
  del argv
  problem = missing(FLAGS.torch_scae)
  if problem:
    print(f'torch_reference: {problem}', file=sys.stderr)
    sys.exit(1)
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from attacks import classifiers  # pylint: disable=g-import-not-at-top
  from attacks import evasion  # pylint: disable=g-import-not-at-top
  from scae_tf import configs, recipes  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top
  from scae_tf.training import make_train_step  # pylint: disable=g-import-not-at-top
  from timing import alternating_times, capsule_outer_call, cpu_model  # pylint: disable=g-import-not-at-top
  from timing import markdown_table, random_batch  # pylint: disable=g-import-not-at-top

  threads = sorted({int(n) for n in FLAGS.torch_threads or
                    (1, os.cpu_count())})
  factory = port_modules(FLAGS.torch_scae)
  config = configs.MNIST
  batch = FLAGS.batch_size
  recipe = recipes.get_recipe(config.default_recipe).replace(batch_size=batch)
  torch.manual_seed(0)
  images, labels = random_batch(config, batch)
  x_nchw = torch.from_numpy(np.ascontiguousarray(
      np.transpose(images.numpy(), (0, 3, 1, 2))))
  y_torch = torch.from_numpy(labels.numpy())

  ours = SCAE(config)
  ours_train = make_train_step(
      ours, TF1RMSProp.for_recipe(ours.trainable_variables, recipe),
      noise=True)
  port = factory.make_scae(port_params(config))
  port_train = port_train_step(port, recipe.learning_rate, batch)

  target = classifiers.make_classifier(SCAE(config.without_noise()), 'PosL')
  ours_attack, ours_attack_args = capsule_outer_call(target, images, labels,
                                                     FLAGS.inner)
  const_init = evasion.get_config('paper_train').const_init
  attacked = factory.make_scae(port_params(config, noise=False))
  x, w, mask, subset, const, p = port_attack_inputs(attacked, images,
                                                    const_init)
  port_outer = port_attack(attacked, config.n_part_caps)
  inner = FLAGS.inner

  def with_threads(n, fn, *args):
    def call():
      torch.set_num_threads(n)
      return fn(*args)
    return call, ()

  calls = dict(ours_train=(ours_train, (images, labels)),
               ours_attack=(ours_attack, ours_attack_args))
  for n in threads:
    calls[f'port_train_{n}'] = with_threads(n, port_train, x_nchw, y_torch)
    calls[f'port_attack_{n}'] = with_threads(
        n, lambda: port_outer(x, w, mask, subset, y_torch, const, p,
                              inner)[0])
  times = alternating_times(calls, FLAGS.rounds)
  stat = {name: (float(np.median(t)), float(np.min(t)))
          for name, t in times.items()}
  for name in stat:
    if 'attack' in name:
      stat[name] = tuple(s / inner for s in stat[name])
  print(f'CPU: {cpu_model()} ({os.cpu_count()} logical cores); torch '
        f'{torch.__version__} (OMP_WAIT_POLICY='
        f'{os.environ["OMP_WAIT_POLICY"]}), TensorFlow {tf.__version__}; '
        f'load average {os.getloadavg()[0]:.2f}; batch {batch}, '
        f'{FLAGS.rounds} rounds, {inner} attack iterations a call; MNIST '
        f'config: {config.n_part_caps} part capsules ({config.template_size}x'
        f'{config.template_size} templates), {config.n_obj_caps} object '
        'capsules.\n')
  rows = []
  for step, key in (('training step', 'train'),
                    ('attack iteration', 'attack')):
    om, on = stat[f'ours_{key}']
    rows.append((f'{step}, ours', f'{om:.3f}', f'{on:.3f}', '', ''))
    best = min(stat[f'port_{key}_{n}'][0] for n in threads)
    for n in threads:
      pm, pn = stat[f'port_{key}_{n}']
      ratio = f'{pm / om:.2f}'
      rows.append((f'{step}, port, {n} torch thread{"s" * (n > 1)}',
                   f'{pm:.3f}', f'{pn:.3f}',
                   f'**{ratio}**' if pm == best else ratio, f'{pn / on:.2f}'))
  print(markdown_table(
      ['seconds', 'median', 'min', 'port / ours (medians)',
       'port / ours (mins)'], rows))

if __name__ == '__main__':
  define_flags()
  app.run(main)
