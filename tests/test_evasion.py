"""The paper's attack (`attacks.evasion`) on toy capsule models
(helpers/attack_toys.py) with closed-form answers, and against references
written out here.

The fork's schedule (`fork_attack`) is written out with its own objective
and TF1 optimisers, importing nothing from `attacks`. The last test attacks
the original code's trained SCAE with the defences' `paper_train` preset."""

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers, evasion, objectives
from conftest import data_path, reference_path
from helpers.attack_toys import CLEAN_PRED, ConstantPrediction
from helpers.attack_toys import ToyLinearCapsules, kmeans_for, linear_problem
from helpers.attack_toys import target, two_heads_problem
from scae_tf import checkpoints, configs, data
from scae_tf.kmeans import KMeansClassifier
from scae_tf.capsules.model import SCAE


# --- the search --------------------------------------------------------------

def test_update_const_schedule_by_hand():
  # Per example: misses multiply by 10 until the first hit, then bisect.
  hits = np.array([[0, 1, 1], [0, 1, 0], [1, 1, 0], [0, 1, 0], [1, 1, 1]],
                  bool)
  const = tf.fill([3], 100.)
  lower, upper = tf.zeros([3]), tf.fill([3], np.inf)
  seen = []
  for hit in hits:
    const, lower, upper = evasion.update_const(const, lower, upper, hit)
    seen.append(const.numpy())
  np.testing.assert_allclose(np.array(seen), [
      [1000., 50., 50.],
      [10000., 25., 75.],         # ex. 2: lb = 50, ub = 100
      [5500., 12.5, 87.5],        # ex. 1: ub = 10^4, lb = 10^3
      [7750., 6.25, 93.75],
      [6625., 3.125, 90.625]])     # ex. 3: ub = 93.75, lb = 87.5


def test_attack_search_failure_and_success_rules():
  clf = ConstantPrediction()
  x = np.random.default_rng(0).uniform(.2, .8, (2, 4, 4, 1)).astype(
      np.float32)
  labels = np.array([1, 0])  # example 0 always succeeds, example 1 never
  settings = dict(outer_iterations=4, inner_iterations=2)
  r = evasion.CapsuleAttack(clf, 'paper_eval', **settings)(x, labels)
  np.testing.assert_array_equal(r.hit_history, [[1, 0]] * 4)
  np.testing.assert_allclose(r.const_history,
                             [[100, 100], [50, 1e3], [25, 1e4], [12.5, 1e5]])
  np.testing.assert_array_equal(r.success, [True, False])
  assert np.isfinite(r.l2[0]) and r.l2[1] == np.inf
  np.testing.assert_allclose(r.l2[0], np.linalg.norm(r.adversarial[0] - x[0]),
                             rtol=1e-4)
  assert np.isnan(r.adversarial[1]).all()
  clean = evasion.CapsuleAttack(clf, 'paper_eval', on_failure='clean',
                                **settings)(x, labels)
  np.testing.assert_array_equal(clean.adversarial[1], x[1])
  assert clean.l2[1] == np.inf
  # Paper criterion: the prediction must change from the clean one (always
  # 0 here), so nothing succeeds, whatever the label.
  paper = evasion.CapsuleAttack(clf, 'paper_eval', success='clean_prediction',
                                **settings)(x, labels)
  assert not paper.success.any() and np.isnan(paper.adversarial).all()
  np.testing.assert_array_equal(paper.clean_pred, [0, 0])


def test_mask_confines_the_perturbation():
  x = np.zeros((1, 6, 6, 1), np.float32)
  x[0, 1:3, 1:3] = 0.8  # a "stroke"; the mask is 0 from row / column 4 on
  labels = np.array([1])  # always succeeds with ConstantPrediction
  clf = ConstantPrediction((6, 6, 1))
  far = (0, slice(4, None), slice(None), 0)
  # x_adv with p' = 0: x squeezed by the 0.999999 factor (5e-7 for x = 0).
  squeezed = objectives.from_tanh_space(objectives.to_tanh_space(x)).numpy()
  masked = evasion.CapsuleAttack(clf, 'paper_train', outer_iterations=1,
                                 inner_iterations=3)(x, labels).adversarial
  np.testing.assert_allclose(masked[far], squeezed[far], rtol=1e-6)
  assert np.abs(masked - x)[0, :3, :3].max() > 1e-2
  free = evasion.CapsuleAttack(clf, 'paper_train', outer_iterations=1,
                               inner_iterations=3, use_mask=False)(x, labels)
  assert (np.abs(free.adversarial[far] / squeezed[far] - 1) > .1).any()


@pytest.mark.parametrize('preset', ['paper_eval', 'paper_train'])
def test_box_constraint(preset):
  model, _, x = linear_problem([0.1, 0.3])
  x[0, 0, 0, 0], x[1, 3, 3, 0] = 0., 1.
  attack = evasion.CapsuleAttack(classifiers.make_classifier(model, 'PriL'),
                                 preset, outer_iterations=2,
                                 inner_iterations=20, learning_rate=5.,
                                 use_mask=False, on_failure='clean')
  r = attack(x, np.zeros(2, np.int64))
  adv = r.adversarial
  assert np.isfinite(adv).all()
  assert adv.min() >= 0. and adv.max() <= 1.
  # Steps of 5 in the tanh space push the pixels of a success against the
  # lower bound, where an additive perturbation would have left the box;
  # the pixel at 1 stays at 1.
  assert r.success.any()
  for i in np.flatnonzero(r.success):
    assert (adv[i] < 1e-3).sum() >= 4, adv[i].ravel()
  assert adv[1, 3, 3, 0] == 1.
  l2 = np.sqrt(np.sum(np.square(adv - x), axis=(1, 2, 3)))
  np.testing.assert_allclose(r.l2[r.success], l2[r.success], rtol=1e-5)
  np.testing.assert_array_equal(adv[~r.success], x[~r.success])


def test_finds_the_closed_form_minimum_per_example():
  distances = [0.1, 0.2, 0.25, 0.3]
  model, w, x = linear_problem(distances)
  attack = evasion.CapsuleAttack(
      classifiers.make_classifier(model, 'PriL'), 'paper_eval',
      use_mask=False, learning_rate=0.01, inner_iterations=300,
      outer_iterations=15, const_init=1., const_coupling='example')
  r = attack(x, np.zeros(4, np.int64))
  assert r.success.all()
  # Nothing can beat the distance to the hyperplane; the attack is within
  # 1 % of it, and its perturbation points along -w.
  assert (r.l2 >= np.array(distances) * (1 - 1e-4)).all()
  np.testing.assert_allclose(r.l2, distances, rtol=1e-2)
  delta = (r.adversarial - x).reshape(4, -1)
  cosine = -(delta @ w) / np.linalg.norm(delta, axis=1)
  assert (cosine > 0.99).all()


def test_posk_with_kmeans_and_fork_defaults_reaches_the_minimum():
  # PosK: k-means (cosine) on the posterior masses; fork's subset rule and
  # batch coupling (one example per batch: same as per-example).
  model, _, x = linear_problem([0.2], seed=3)
  km = KMeansClassifier(centers=np.eye(2), metric='cosine',
                        feature='posterior', cluster_to_label=[0, 1])
  attack = evasion.CapsuleAttack(
      classifiers.make_classifier(model, 'posk', kmeans=km), 'paper_eval',
      use_mask=False, learning_rate=0.01, inner_iterations=300,
      outer_iterations=14, const_init=1.)
  r = attack(x, np.zeros(1, np.int64))
  np.testing.assert_allclose(r.l2, [0.2], rtol=1e-2)


def test_bad_inputs_raise_before_any_work():
  attack = evasion.CapsuleAttack(ConstantPrediction(), 'paper_train')
  x = np.full((2, 4, 4, 1), .5, np.float32)
  y = np.array([0, 1])
  bad = [
      (x[:, :3], y, 'shape'), (x[0], y, 'shape'), (x[:0], y[:0], 'shape'),
      ((x * 255).astype(np.uint8), y, 'dtype'), (x + 1., y, 'values in'),
      (np.where(x > 0, np.nan, x), y, 'NaN'), (x, y[:1], 'labels'),
      (x, y.astype(np.float32), 'integers'), (x, np.array([0, 2]), 'labels'),
      (x, np.array([-1, 0]), 'labels'), ([[0.5]], y, 'images')]
  for images, labels, match in bad:
    with pytest.raises(ValueError, match=match):
      attack(images, labels)
  assert attack._prepare.experimental_get_tracing_count() == 0


def test_bad_settings_and_classifiers():
  clf = ConstantPrediction()
  with pytest.raises(ValueError, match='Unknown attack preset'):
    evasion.CapsuleAttack(clf, 'paper_best')
  with pytest.raises(ValueError, match='Unknown attack setting'):
    evasion.CapsuleAttack(clf, 'paper_eval', inner=3)
  for field, value in (('optimizer', 'sgd'), ('inner_iterations', 0),
                       ('learning_rate', -1.), ('subset', 'all'),
                       ('success', 'any'), ('on_failure', 'zero'),
                       ('capsule_loss', 'l1'), ('const_coupling', 'none')):
    with pytest.raises(ValueError, match=field):
      evasion.CapsuleAttack(clf, 'paper_eval', **{field: value})
  with pytest.raises(ValueError, match='CapsuleClassifier'):
    evasion.CapsuleAttack(object(), 'paper_eval')
  model = ToyLinearCapsules(np.ones(16))
  with pytest.raises(ValueError, match='Unknown classifier'):
    classifiers.make_classifier(model, 'PriX')
  with pytest.raises(ValueError, match='needs a k-means'):
    classifiers.make_classifier(model, 'PriK')
  km = KMeansClassifier(centers=np.eye(2), metric='cosine', feature='prior',
                        cluster_to_label=[0, 1])
  with pytest.raises(ValueError, match='posterior features'):
    classifiers.make_classifier(model, 'PosK', kmeans=km)
  with pytest.raises(ValueError, match='no target'):
    evasion.make_attack(model, 'paper_eval')
  assert evasion.make_attack(model, 'paper_train').classifier.name == 'PosL'
  assert evasion.PRESETS['paper_eval'] == evasion.AttackConfig(
      'adam', 1.0, 9, 300, const_init=100.)
  assert classifiers.kmeans_path_beside('/r/ckpt-5', 'PosK') == \
      '/r/ckpt-5.kmeans_posterior_cosine.npz'


# --- the compiled loop on each target ----------------------------------------

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
@pytest.mark.parametrize('jit', [False, True])
def test_compiled_loop_matches_the_forks_schedule(optimizer, lr, name, jit):
  # The compiled loop scores p'_j with the forward pass of step j (n + 1
  # passes for n steps); the fork runs a separate pass after every step.
  d = [0.02, 0.1, 0.3, 0.6]
  model, _, _, x = two_heads_problem(d, d[::-1], seed=5)
  labels = np.full(4, CLEAN_PRED[name])
  attack = evasion.CapsuleAttack(
      target(model, name), 'paper_eval', optimizer=optimizer,
      learning_rate=lr, outer_iterations=4, inner_iterations=6,
      const_init=1., jit_compile=jit)
  r = attack(x, labels, seed=11)
  l2, best, consts = fork_attack(model, name, x, labels, optimizer, lr,
                                 outer=4, inner=6, const=1., seed=11)
  assert r.hit_history.any() and not r.hit_history.all()  # a real search
  np.testing.assert_allclose(r.l2, l2, rtol=1e-4)
  np.testing.assert_allclose(r.adversarial, best, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(r.const_history, consts, rtol=1e-6)


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
