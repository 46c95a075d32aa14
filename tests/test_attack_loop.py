"""The attack's loop and targets against references written out here.

`TwoHeads` is a toy capsule model whose prior and posterior heads look at
different pixels, so that each of PriK, PosK, PriL and PosL has its own
feature and prediction, and a target wired to the wrong one fails. The
fork's schedule (`fork_attack`) is written out with its own objective and
TF1 optimisers, importing nothing from `attacks`. The last test attacks the
original code's trained SCAE with the defences' `paper_train` preset.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, evasion
from conftest import data_path, reference_path
from scae_tf import checkpoints, configs, data
from scae_tf.kmeans import KMeansClassifier
from scae_tf.model import SCAE
from test_attacks import ToyConfig, ToyOutput

# The clean prediction of each target on an image with a > 0 and b > 0.
CLEAN_PRED = dict(PriK=3, PosK=1, PriL=0, PosL=2)


class TwoHeads:
  """a = <u, x - .5> drives the prior head, b = <v, x - .5> the posterior
  one. Prior presences sigmoid([a, -a]); posterior mixing probabilities of
  the two parts softmax([b, -b]) and softmax([2b, -2b]), so the posterior
  masses (summed over the parts) lie in [0, 2]. The prior probe predicts 0
  iff a > 0, else 1; the posterior probe 2 iff b > 0, else 3."""

  def __init__(self, u, v):
    self.config = dataclasses.replace(ToyConfig(), n_part_caps=2,
                                      num_classes=4)
    self.u = tf.constant(np.asarray(u, np.float32).reshape(-1, 1))
    self.v = tf.constant(np.asarray(v, np.float32).reshape(-1, 1))

  def forward(self, images, full=False, training=False):
    del full, training
    flat = tf.reshape(images, [tf.shape(images)[0], -1]) - 0.5
    a, b = tf.matmul(flat, self.u), tf.matmul(flat, self.v)
    mixing = tf.stack([tf.nn.softmax(tf.concat([b, -b], -1)),
                       tf.nn.softmax(tf.concat([2. * b, -2. * b], -1))], 1)
    prior_pred = tf.where(a[:, 0] > 0, 0, 1)
    posterior_pred = tf.where(b[:, 0] > 0, 2, 3)
    return ToyOutput(tf.sigmoid(tf.concat([a, -a], -1)), mixing,
                     tf.cast(prior_pred, tf.int64),
                     tf.cast(posterior_pred, tf.int64))


def kmeans_for(kind):
  """Cluster 0 = capsule 0 dominant (a > 0 or b > 0). PriK maps it to 3,
  PosK to 1: four different labels for the four targets."""
  mapping = [3, 2] if kind == 'prior' else [1, 0]
  return KMeansClassifier(np.eye(2), 'cosine', kind, mapping)


def target(model, name):
  km = kmeans_for(classifiers.feature_kind_of(name)) if name.endswith(
      'K') else None
  return classifiers.make_classifier(model, name, kmeans=km)


def two_heads_problem(a_dist, b_dist, sign=1., seed=0):
  """Images [B, 4, 4, 1] at distances a_dist from the prior boundary and
  b_dist from the posterior one. u and v are unit vectors on disjoint
  halves of the image (orthogonal), all of whose entries have the sign
  `sign`: with sign = 1 brightening moves away from both boundaries, with
  sign = -1 towards them."""
  rng = np.random.default_rng(seed)
  u, v = np.zeros(16), np.zeros(16)
  u[:8], v[8:] = rng.uniform(0.5, 1.5, 8), rng.uniform(0.5, 1.5, 8)
  u, v = sign * u / np.linalg.norm(u), sign * v / np.linalg.norm(v)
  x = 0.5 + np.outer(a_dist, u) + np.outer(b_dist, v)
  return TwoHeads(u, v), u, v, x.reshape(-1, 4, 4, 1).astype(np.float32)


def _sigmoid(z):
  return 1. / (1. + np.exp(-z))


def test_each_target_reads_its_own_feature_and_prediction():
  model, u, v, _ = two_heads_problem([], [])
  rng = np.random.default_rng(1)
  x = rng.uniform(0.1, 0.9, (64, 4, 4, 1)).astype(np.float32)
  flat = x.reshape(64, -1) - 0.5
  a, b = flat @ u, flat @ v
  assert {(s, t) for s, t in zip(a > 0, b > 0)} == {
      (True, True), (True, False), (False, True), (False, False)}
  prior = np.stack([_sigmoid(a), _sigmoid(-a)], 1)
  posterior = np.stack([_sigmoid(2 * b) + _sigmoid(4 * b),
                        _sigmoid(-2 * b) + _sigmoid(-4 * b)], 1)
  want = dict(PriK=(prior, np.where(a > 0, 3, 2)),
              PosK=(posterior, np.where(b > 0, 1, 0)),
              PriL=(prior, np.where(a > 0, 0, 1)),
              PosL=(posterior, np.where(b > 0, 2, 3)))
  for name, (features, pred) in want.items():
    clf = target(model, name)
    assert clf.feature_kind == ('prior' if name.startswith('Pri')
                                else 'posterior')
    assert clf.n_part_caps == 2
    got_features, got_pred = clf(tf.constant(x))
    np.testing.assert_allclose(got_features.numpy(), features, rtol=1e-5,
                               err_msg=name)
    np.testing.assert_array_equal(got_pred.numpy(), pred, err_msg=name)
    assert got_pred.dtype == tf.int64
  # On an image with a > 0 and b > 0 the four targets disagree.
  _, _, _, x1 = two_heads_problem([.2], [.2])
  assert {n: int(target(model, n)(x1)[1][0]) for n in want} == CLEAN_PRED


def test_targets_run_the_scae_without_its_noise():
  """The tiny config has presence noise (scale 4); the targets run the
  inference pass, so every call gives the same features and predictions."""
  tf.random.set_seed(0)
  model = SCAE(configs.tiny_config())
  images = tf.random.uniform([3, 20, 20, 1], seed=1)
  out = model.forward(images, training=False)
  for name, want in (('PriL', out.caps_presence_prob),
                     ('PosL', out.posterior_presence)):
    clf = classifiers.make_classifier(model, name)
    (f1, p1), (f2, p2) = clf(images), clf(images)
    np.testing.assert_array_equal(f1.numpy(), f2.numpy())
    np.testing.assert_array_equal(p1.numpy(), p2.numpy())
    np.testing.assert_allclose(f1.numpy(), want.numpy(), rtol=1e-6)


@pytest.mark.parametrize('name', ['PriK', 'PosK', 'PriL', 'PosL'])
def test_attack_moves_the_targets_own_head(name):
  """The capsule loss lowers the target's own feature, so the perturbation
  lies on its head's pixels and flips that head; the other head (the
  other half of the image) is left alone."""
  model, u, v, x = two_heads_problem([.15, .3], [.3, .15])
  own, other = (u, v) if name.startswith('Pri') else (v, u)
  attack = evasion.CapsuleAttack(
      target(model, name), 'paper_eval', use_mask=False, learning_rate=.02,
      outer_iterations=6, inner_iterations=100, const_init=1.,
      const_coupling='example')
  r = attack(x, np.full(2, CLEAN_PRED[name]), seed=2)
  assert r.success.all()
  out = model.forward(tf.constant(r.adversarial))
  head = out.prior_cls_pred if name.startswith('Pri') else \
      out.posterior_cls_pred
  clean = model.forward(tf.constant(x))
  clean_head = clean.prior_cls_pred if name.startswith('Pri') else \
      clean.posterior_cls_pred
  assert (head.numpy() != clean_head.numpy()).all()
  delta = (r.adversarial - x).reshape(2, -1)
  along_own = -(delta @ own) / np.linalg.norm(delta, axis=1)
  assert (along_own > 0.9).all(), along_own
  assert (np.abs(delta @ other) < 0.05).all(), delta @ other


def test_random_start_is_never_scored():
  """The fork scores p'_1 .. p'_n, never the random start p'_0. Here every
  p'_0 is already adversarial (brightening crosses the prior boundary), but
  the one signed step per outer iteration goes back past the clean image:
  no success. With a second step, p'_2 = p'_0 (to rounding) is scored by
  the last forward pass and succeeds."""
  model, u, _, x = two_heads_problem([.03, .06, .1], [.3, .3, .3], sign=-1.)
  clf = target(model, 'PriL')
  labels = np.zeros(3, np.int64)
  settings = dict(outer_iterations=3, const_init=1e-3)
  r = evasion.CapsuleAttack(clf, 'paper_train', inner_iterations=1,
                            **settings)(x, labels, seed=3)
  # Every random start is adversarial (the attack's draws, replayed).
  gen = tf.random.Generator.from_seed(3)
  w = np.arctanh((x - .5) / .5 * 0.999999)
  mask = box_average(x)
  for _ in range(3):
    p = gen.uniform(x.shape).numpy()
    start = 0.5 * (np.tanh(w + mask * p) + 1.)
    assert ((start.reshape(3, -1) - .5) @ u < 0).all()  # label 1 != 0
  assert not r.success.any() and not r.hit_history.any()
  np.testing.assert_array_equal(r.adversarial, x)  # on_failure='clean'
  assert np.isinf(r.l2).all()
  twice = evasion.CapsuleAttack(clf, 'paper_train', inner_iterations=2,
                                **settings)(x, labels, seed=3)
  assert twice.success.all() and twice.hit_history.all()


# --- the fork's loop, written out --------------------------------------------

def box_average(images):
  """The fork's `imblur`: 3 x 3 mean over the in-bounds neighbours."""
  out = np.zeros_like(images)
  h, w = images.shape[1:3]
  for i in range(h):
    for j in range(w):
      box = images[:, max(i - 1, 0):i + 2, max(j - 1, 0):j + 2]
      out[:, i, j] = box.mean(axis=(1, 2))
  return out


class NumpyTF1Optimizer:
  """TF1's Adam and RMSProp (momentum .9, mean square starting at 1) and the
  signed step, on float32 numpy arrays; `reset` as at every outer
  iteration."""

  def __init__(self, name, lr):
    self.name, self.lr = name, np.float32(lr)

  def reset(self, p):
    zeros = np.zeros_like(p)
    self.state = dict(adam=(zeros, zeros, 0), rmsprop=(zeros + 1., zeros),
                      sign=())[self.name]

  def step(self, p, g):
    if self.name == 'sign':
      return p - self.lr * np.sign(g)
    if self.name == 'rmsprop':
      ms, mom = self.state
      ms = ms + (g * g - ms) * np.float32(.1)
      mom = np.float32(.9) * mom + self.lr * g / np.sqrt(ms + np.float32(1e-6))
      self.state = ms, mom
      return p - mom
    m, v, t = self.state
    t += 1
    m = np.float32(.9) * m + np.float32(.1) * g
    v = np.float32(.999) * v + np.float32(.001) * g * g
    lr_t = self.lr * np.sqrt(1 - np.float32(.999) ** t) / (
        1 - np.float32(.9) ** t)
    self.state = m, v, t
    return p - lr_t * m / (np.sqrt(v) + np.float32(1e-8))


def fork_attack(model, name, x, labels, optimizer, lr, outer, inner, const,
                seed):
  """The fork's `AttackerOPT.__call__` (`attack_opt.py`) on the toy, eagerly:
  S = capsules above the clean batch's mean feature; per step the vector
  loss const * l2_loss(features * S) [/ P^2] + sum of 0.5 ||x_adv - x||^2
  (differentiated as its sum), an optimiser update of p', then a SECOND
  forward pass scores the new point against the label. Alpha: x10 until
  the first success, then bisection."""
  n, n_parts = len(labels), model.config.n_part_caps
  w = np.arctanh((x - .5) / .5 * np.float32(0.999999))
  mask = box_average(x)

  def feature_and_pred(images):
    out = model.forward(images)
    if name.startswith('Pri'):
      f, probe = out.caps_presence_prob, out.prior_cls_pred
    else:
      f, probe = tf.reduce_sum(out.posterior_mixing_probs, 1), \
          out.posterior_cls_pred
    if name.endswith('K'):
      km = kmeans_for('prior' if name.startswith('Pri') else 'posterior')
      probe = km.cluster_to_label[np.argmax(f.numpy(), 1)]  # centres = eye
    return f, np.asarray(probe)

  clean_f, _ = feature_and_pred(tf.constant(x))
  subset = tf.cast(clean_f > tf.reduce_mean(clean_f), tf.float32)
  gen = tf.random.Generator.from_seed(seed)
  opt = NumpyTF1Optimizer(optimizer, lr)
  const = np.full(n, const, np.float32)
  lower, upper = np.zeros(n), np.full(n, np.inf)
  best_l2, best = np.full(n, np.inf), np.full(x.shape, np.nan, np.float32)
  consts = []
  for _ in range(outer):
    p = gen.uniform(x.shape).numpy()
    opt.reset(p)
    hit = np.zeros(n, bool)
    for _ in range(inner):
      p_t = tf.constant(p)
      with tf.GradientTape() as tape:
        tape.watch(p_t)
        x_adv = 0.5 * (tf.tanh(w + mask * p_t) + 1.)
        f, _ = feature_and_pred(x_adv)
        caps = tf.nn.l2_loss(f * subset)
        if name.startswith('Pos'):
          caps /= n_parts ** 2
        loss = const * caps + tf.reduce_sum(
            0.5 * tf.reduce_sum(tf.square(x_adv - x), [1, 2, 3]))
      p = opt.step(p, tape.gradient(loss, p_t).numpy())
      x_adv = 0.5 * (tf.tanh(w + mask * p) + 1.)
      _, pred = feature_and_pred(x_adv)
      l2 = np.sqrt(np.sum(np.square(x_adv.numpy() - x), axis=(1, 2, 3)))
      ok = pred != labels
      hit |= ok
      better = ok & (l2 < best_l2)
      best_l2[better], best[better] = l2[better], x_adv.numpy()[better]
    consts.append(const.copy())
    upper = np.where(hit, const, upper)
    lower = np.where(hit, lower, const)
    const = np.where(np.isinf(upper), const * 10, (lower + upper) / 2
                     ).astype(np.float32)
  return best_l2, best, np.array(consts)


@pytest.mark.parametrize('optimizer,lr,name', [
    ('adam', .3, 'PosL'), ('rmsprop', .1, 'PriK'), ('sign', .3, 'PosK'),
    ('adam', .3, 'PriL')])
def test_compiled_loop_matches_the_forks_schedule(optimizer, lr, name):
  # The compiled loop scores p'_j with the forward pass of step j (n + 1
  # passes for n steps); the fork runs a separate pass after every step.
  d = [0.02, 0.1, 0.3, 0.6]
  model, _, _, x = two_heads_problem(d, d[::-1], seed=5)
  labels = np.full(4, CLEAN_PRED[name])
  attack = evasion.CapsuleAttack(
      target(model, name), 'paper_eval', optimizer=optimizer,
      learning_rate=lr, outer_iterations=4, inner_iterations=6,
      const_init=1.)
  r = attack(x, labels, seed=11)
  l2, best, consts = fork_attack(model, name, x, labels, optimizer, lr,
                                 outer=4, inner=6, const=1., seed=11)
  assert r.hit_history.any() and not r.hit_history.all()  # a real search
  np.testing.assert_allclose(r.l2, l2, rtol=1e-4)
  np.testing.assert_allclose(r.adversarial, best, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(r.const_history, consts, rtol=1e-6)


# --- the original code's trained SCAE ----------------------------------------

@pytest.mark.fixtures
def test_paper_train_attack_on_the_reference_scae():
  """`paper_train` (5 x 30 signed steps against PosL, failures clean) on the
  original code's trained checkpoint, its probes included: four test digits
  that PosL classifies right when clean, one it gets wrong, and a black
  image, whose blurred-image mask is zero: it cannot be perturbed, so its
  attack must fail."""
  model = SCAE(configs.MNIST.without_noise())
  checkpoints.load_tf1_checkpoint(
      model, str(reference_path('scae_mnist_trained', 'model.ckpt')))
  images, labels = data.load_split(str(data_path('mnist')), 'test')
  x = np.concatenate([data.pad_center(images[:100]),
                      np.zeros((1, 40, 40, 1), np.float32)])
  clean = model.forward(tf.constant(x)).posterior_cls_pred.numpy()
  y = np.append(labels[:100], clean[100]).astype(np.int64)
  right = np.flatnonzero(clean[:100] == y[:100])
  wrong = np.flatnonzero(clean[:100] != y[:100])
  pick = np.concatenate([right[:4], wrong[:1], [100]])
  x, y = x[pick], y[pick]
  attack = evasion.make_attack(model, 'paper_train')
  assert attack.classifier.name == 'PosL'
  r = attack(x, y, seed=0)
  np.testing.assert_array_equal(r.clean_pred, clean[pick])
  assert r.success[:4].any()
  assert r.success[4]  # wrong when clean: the first step succeeds
  assert not r.success[5]
  adv = r.adversarial
  assert adv.min() >= 0. and adv.max() <= 1.
  # Every reported success is misclassified when re-evaluated, with the
  # reported L2; failures come back as the clean image.
  again = model.forward(tf.constant(adv)).posterior_cls_pred.numpy()
  assert (again[r.success] != y[r.success]).all()
  l2 = np.sqrt(np.sum(np.square(adv.astype(np.float64) - x), (1, 2, 3)))
  np.testing.assert_allclose(r.l2[r.success], l2[r.success], rtol=1e-4)
  assert (l2[r.success] > 0).all()
  np.testing.assert_array_equal(adv[~r.success], x[~r.success])
  assert np.isinf(r.l2[~r.success]).all()
