"""The defences' building blocks on the tiny config: Eq. 7 and Eq. 8 as
loss functions, the adversarial batches of Algorithm 5 inside the compiled
step, and a frozen teacher."""

import dataclasses
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

from attacks import classifiers
from attacks import evasion
from attacks import margins
from attacks import pgd
from defenses import adversarial_batches
from defenses import methods
from defenses import objectives
from defenses.adversarial_batches import AdversarialBatches
from defenses.adversarial_batches import DefenceBatch
from scae_tf import configs
from scae_tf import recipes
from scae_tf import training
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp

TINY = configs.tiny_config().without_noise()
# A short attack keeps the tests fast; its schedule is the preset's.
QUICK = dict(outer_iterations=2, inner_iterations=3)
# The trainer's tests: one outer iteration (a compiled step traces each
# outer iteration of its attack anew); the schedule across outer
# iterations in the step is QUICK's, in the tests of the building blocks.
TRAINER_ATTACK = dict(outer_iterations=1, inner_iterations=2)


def _model(seed):
  tf.random.set_seed(seed)
  np.random.seed(seed)
  return SCAE(TINY)


def _data(n=4, seed=0):
  rng = np.random.RandomState(seed)
  images = rng.rand(n, 20, 20, 1).astype(np.float32)
  labels = rng.randint(0, 10, n).astype(np.int64)
  return tf.constant(images), tf.constant(labels)


def _ctx():
  return training.StepContext(step=tf.constant(0, tf.int64), noise=False,
                              seed=None)


def _batch(fed, labels, clean):
  return DefenceBatch(fed, labels, clean, tf.constant(True), tf.constant(1.),
                      tf.constant(2.))


def test_at_loss_reconstructs_the_clean_image_from_the_adversarial_one():
  model = _model(0)
  x, y = _data()
  x_adv = tf.clip_by_value(x + 0.3 * tf.sign(tf.random.normal(x.shape)),
                           0., 1.)
  loss, metrics = objectives.adversarial_training_objective(
      model, _batch(x_adv, y, x), _ctx())
  # By hand: the loss on x_adv with its own target, with the image
  # log-likelihood of x_adv swapped for that of x under the same mixture.
  out = model.forward(x_adv, y, full=True)
  own = model.loss(out).numpy()
  ll_own = out.rec_ll_per_pixel.numpy().sum((1, 2, 3)).mean()
  # The TINY config decodes the part poses and presences ('enc').
  rec = model.template_decoder(out.part.pose, out.part.presence,
                               out.part.feature)
  ll_x = rec.pdf.log_prob(x).numpy().sum((1, 2, 3)).mean()
  np.testing.assert_allclose(loss.numpy(), own + ll_own - ll_x, rtol=1e-5)
  assert abs(ll_x - ll_own) > 1.  # the target matters
  np.testing.assert_allclose(metrics['rec_ll'], ll_x, rtol=1e-5)
  # Every other term is the adversarial input's.
  for key in ('log_prob', 'prior_within_sparsity_loss', 'posterior_cls_xe'):
    np.testing.assert_allclose(metrics[key], getattr(out, key), rtol=1e-5)
  assert metrics['attack_success_rate'] == 1. and metrics['adversarial'] == 1.


@pytest.mark.parametrize('target', objectives.AD_TARGETS)
def test_ad_loss_is_eq_8_by_hand(target):
  pair = objectives.StudentTeacher(_model(0), _model(1))
  x, y = _data()
  x_adv = tf.clip_by_value(x + 0.2, 0., 1.)
  loss_fn = objectives.distillation_objective(0.5, target)
  loss, metrics = loss_fn(pair, _batch(x_adv, y, x), _ctx())
  stu = pair.student.forward(x_adv, y, full=False,
                             target=x_adv if target == 'input' else x)
  tch = pair.teacher.forward(x, full=False)
  distill = 0.5 * (
      np.sum((stu.caps_presence_prob.numpy()
              - tch.caps_presence_prob.numpy()) ** 2)
      + np.sum((stu.posterior_mixing_probs.numpy()
                - tch.posterior_mixing_probs.numpy()) ** 2))
  student_loss = pair.student.loss(stu).numpy()
  np.testing.assert_allclose(metrics['distillation_loss'], distill,
                             rtol=1e-5)
  np.testing.assert_allclose(loss, 0.5 * student_loss + 0.5 * distill,
                             rtol=1e-5)
  assert distill > 1e-3  # two different models: the term is not trivially 0


def test_ad_targets_differ_and_bad_settings_are_refused():
  pair = objectives.StudentTeacher(_model(0), _model(1))
  x, y = _data()
  batch = _batch(tf.clip_by_value(x + 0.2, 0., 1.), y, x)
  losses = [objectives.distillation_objective(0.5, t)(pair, batch, _ctx())[0]
            for t in objectives.AD_TARGETS]
  assert abs(float(losses[0] - losses[1])) > 1e-3
  with pytest.raises(ValueError, match='Unknown AD target'):
    objectives.distillation_objective(0.5, 'adversarial')
  with pytest.raises(ValueError, match='in \\[0, 1\\]'):
    objectives.distillation_objective(1.5)
  with pytest.raises(ValueError, match='architecture'):
    objectives.StudentTeacher(_model(0), SCAE(TINY.replace(n_obj_caps=5)))


def test_a_training_step_leaves_the_teacher_untouched():
  pair = objectives.StudentTeacher(_model(0), _model(1))
  recipe = recipes.get_recipe('paper').replace(batch_size=4,
                                               learning_rate=1e-2)
  opt = TF1RMSProp.for_recipe(pair.student.trainable_variables, recipe)
  teacher_before = [v.numpy() for v in pair.teacher.variables]
  student_before = [v.numpy() for v in pair.student.trainable_variables]
  x, y = _data()
  # Gradients w.r.t. the teacher are absent: its outputs are constants.
  with tf.GradientTape() as tape:
    loss, _ = objectives.distillation_objective()(
        pair, _batch(x, y, x), _ctx())
  grads = tape.gradient(loss, pair.teacher.trainable_variables)
  assert all(g is None for g in grads)
  prepare = lambda model, batch, ctx: _batch(batch[0], batch[1], batch[0])
  step = training.make_train_step(pair, opt, objectives.distillation_objective(),
                                  noise=False, prepare=prepare)
  step(x, y)
  for before, v in zip(teacher_before, pair.teacher.variables):
    np.testing.assert_array_equal(v.numpy(), before)
  moved = [not np.array_equal(b, v.numpy()) for b, v in
           zip(student_before, pair.student.trainable_variables)]
  assert sum(moved) > len(moved) // 2


def test_in_graph_attack_equals_the_attack_call():
  model = _model(0)
  x, y = _data(6)
  attack = evasion.make_attack(model, 'paper_train', **QUICK)
  expected = attack(x.numpy(), y.numpy(), seed=7)
  run = tf.function(lambda x, y, g: attack.in_graph(x, y, g))
  adv, success, l2 = run(x, y, tf.random.Generator.from_seed(7))
  np.testing.assert_array_equal(success.numpy(), expected.success)
  # One graph instead of one per outer iteration: the optimiser may fuse
  # ops differently, which moves a few pixels by an ulp.
  np.testing.assert_allclose(adv.numpy(), expected.adversarial, rtol=1e-6,
                             atol=2e-7)
  np.testing.assert_allclose(l2.numpy(), expected.l2, rtol=1e-5)
  # Failures come back clean, successes are perturbed, within [0, 1].
  assert expected.success.any()
  np.testing.assert_array_equal(adv.numpy()[~expected.success],
                                x.numpy()[~expected.success])
  assert adv.numpy().min() >= 0. and adv.numpy().max() <= 1.


def test_in_graph_pgd_equals_the_attack_call_and_keeps_the_worst_point():
  model = _model(0)
  x, y = _data(6)
  target = classifiers.make_classifier(model, 'PosL', gradient='full')
  attack = pgd.PGDAttack(target, 'pgd_l2', eps=1., steps=3, restarts=2,
                         zero_start=False)
  expected = attack(x.numpy(), y.numpy(), seed=7)
  run = tf.function(lambda x, y, g: attack.in_graph(x, y, g))
  kept, success, l2 = run(x, y, tf.random.Generator.from_seed(7))
  np.testing.assert_array_equal(success.numpy(), expected.success)
  np.testing.assert_allclose(l2.numpy(), expected.l2, rtol=1e-5)
  won = expected.success
  np.testing.assert_allclose(kept.numpy()[won], expected.adversarial[won],
                             rtol=1e-6, atol=2e-7)
  # Every example is moved, to its most adverse point in the ball and the
  # box, a success or not: the margin there is the call's.
  delta = np.sqrt(((kept.numpy() - x.numpy()) ** 2).sum((1, 2, 3)))
  assert (delta > 0.).all() and (delta <= 1. + 1e-5).all()
  assert kept.numpy().min() >= 0. and kept.numpy().max() <= 1.
  margin, _ = margins.margin_target(target)(kept, y)
  np.testing.assert_allclose(margin.numpy(), expected.margin, rtol=1e-5,
                             atol=1e-6)
  with pytest.raises(ValueError, match='fixed budget'):
    pgd.PGDAttack(target, 'pgd_l2_min').in_graph(x, y,
                                                  tf.random.Generator.from_seed(0))


def test_margin_generator_attacks_the_probe_margin_along_the_full_gradient():
  student = _model(0)
  batches = AdversarialBatches(student, clean_batches=0, seed=3,
                               generator='margin_pgd', steps=2)
  assert isinstance(batches.attack, pgd.PGDAttack)
  assert batches.attack.config == dataclasses.replace(
      adversarial_batches.GENERATORS['margin_pgd'].preset, steps=2)
  clf = batches.attack.target.classifier
  assert (clf.name, clf.gradient) == ('PosL', 'full')
  x, y = _data()
  state = batches.generator.state.numpy()
  got = tf.function(lambda x, y: batches(student, (x, y), _ctx()))(x, y)
  assert bool(got.adversarial)
  replay = tf.random.Generator.from_state(state, batches.generator.algorithm)
  kept, success, _ = batches.attack.in_graph(x, y, replay)
  np.testing.assert_allclose(got.images.numpy(), kept.numpy(), rtol=1e-6,
                             atol=2e-7)
  np.testing.assert_allclose(got.success_rate, np.mean(success.numpy()))
  with pytest.raises(ValueError, match='Unknown generator'):
    AdversarialBatches(student, generator='fgsm')


@pytest.mark.slow  # XLA compiles for about a minute per generator
@pytest.mark.parametrize('generator', ['paper_train', 'margin_pgd'])
def test_xla_generator_gives_the_same_batch_and_step(generator):
  x, y = _data(6)
  overrides = QUICK if generator == 'paper_train' else dict(steps=3)
  weights, batches = [], []
  for jit in (False, True):
    student = _model(0)
    prepare = AdversarialBatches(student, clean_batches=0, seed=3,
                                 generator=generator, jit_compile=jit,
                                 **overrides)
    opt = TF1RMSProp.for_recipe(student.trainable_variables,
                                trainer._recipe(batch_size=6))  # pylint: disable=protected-access
    step = training.make_train_step(
        student, opt, objectives.adversarial_training_objective, noise=False,
        seed=0, prepare=prepare)
    step(x, y)
    weights.append([v.numpy() for v in student.trainable_variables])
    batches.append(tf.function(lambda x, y, p=prepare, s=student: p(
        s, (x, y), _ctx()).images)(x, y).numpy())
  # The XLA loop computes the same attack with other rounding.
  np.testing.assert_allclose(batches[1], batches[0], rtol=0, atol=1e-5)
  for a, b in zip(*weights):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)


def test_the_generator_feeds_the_clean_image_where_it_failed():
  model = _model(0)
  x, _ = _data(8)
  # Labels the model gets right on the clean images, and one signed step:
  # some examples stay correctly classified.
  y = classifiers.make_classifier(model, 'PosL')(x)[1]
  weak = dict(outer_iterations=1, inner_iterations=1)
  batches = AdversarialBatches(model, clean_batches=0, seed=3, **weak)
  state = batches.generator.state.numpy()
  got = tf.function(lambda x, y: batches(model, (x, y), _ctx()))(x, y)
  replay = tf.random.Generator.from_state(state, batches.generator.algorithm)
  _, success, _ = batches.attack.in_graph(x, y, replay)
  failed = ~success.numpy()
  assert failed.any()
  # Exactly the clean image, not the attack's last candidate.
  np.testing.assert_array_equal(got.images.numpy()[failed],
                                x.numpy()[failed])
  # (Every candidate differs from it: the random start p' on the blurred
  # mask of these all-positive images moves every pixel.)


def test_the_code_schedule_decays_ad_phases_only():
  decays = lambda name, schedule: [
      (p.kind, p.lr_decay) for p in methods.plan(
          methods.get_method(name), lr_schedule=schedule)]
  # The authors' code hands RMSProp the constant rate in AT (SPEC_NOTES,
  # Defences) and the decayed one in AD.
  assert decays('hat', 'code') == [('ad', True), ('at', False)]
  assert decays('at', 'code') == [('at', False)]
  assert decays('ntat', 'code') == [('at', False)]
  assert decays('ad', 'code') == [('ad', True)]
  assert decays('hat', 'decay') == [('ad', True), ('at', True)]
  assert decays('ntat', 'decay') == [('at', True)]


def test_every_second_batch_is_adversarial_against_the_trained_model():
  student, teacher = _model(0), _model(1)
  pair = objectives.StudentTeacher(student, teacher)
  batches = AdversarialBatches(pair, attacked=lambda p: p.student, seed=3,
                               **QUICK)
  x, y = _data()
  prepare = tf.function(lambda x, y: batches(pair, (x, y), _ctx()))
  flags = [bool(prepare(x, y).adversarial) for _ in range(5)]
  assert flags == [False, True, False, True, False]
  assert int(batches.counter.numpy()) == 1  # carries on across calls
  # The next (adversarial) batch is the attack on the student, with the
  # generator's current state, and not on the teacher.
  state = batches.generator.state.numpy()
  got = prepare(x, y)
  assert bool(got.adversarial)
  on_student = evasion.make_attack(student, 'paper_train', **QUICK)
  replay = tf.random.Generator.from_state(state, batches.generator.algorithm)
  adv, success, _ = on_student.in_graph(x, y, replay)
  np.testing.assert_allclose(got.images.numpy(), adv.numpy(), rtol=1e-6,
                             atol=2e-7)
  np.testing.assert_allclose(got.success_rate, np.mean(success.numpy()))
  on_teacher = evasion.make_attack(teacher, 'paper_train', **QUICK)
  replay = tf.random.Generator.from_state(state, batches.generator.algorithm)
  teacher_adv, _, _ = on_teacher.in_graph(x, y, replay)
  assert np.abs(teacher_adv.numpy() - got.images.numpy()).max() > 1e-3
  np.testing.assert_array_equal(got.clean.numpy(), x.numpy())
  assert isinstance(batches.attack.classifier, classifiers.ModelClassifier)
  assert batches.attack.classifier.name == 'PosL'


# --- The trainer ------------------------------------------------------------

from conftest import train_defense  # pylint: disable=g-import-not-at-top,wrong-import-position
from defenses import trainer  # pylint: disable=g-import-not-at-top,wrong-import-position
from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from scae_tf import data  # pylint: disable=g-import-not-at-top,wrong-import-position

SMALL = configs.tiny_config(canvas_size=40).without_noise()


def _stream(n=8):
  rng = np.random.RandomState(0)
  return data.BatchStream.from_arrays(
      (rng.rand(n, 28, 28) * 255).astype(np.uint8), rng.randint(0, 10, n),
      4, 'resize', seed=0)


@pytest.fixture(scope='module')
def small_teacher(tmp_path_factory):
  tf.random.set_seed(5)
  np.random.seed(5)
  model = SCAE(SMALL)
  path = str(tmp_path_factory.mktemp('teacher') / 'model')
  return checkpoints.save_tf2_checkpoint(model, path), model


def _defend(method, logdir, teacher=None, **kwargs):
  from conftest import DATA_DIR, data_path  # pylint: disable=g-import-not-at-top
  data_path('mnist')
  kwargs.setdefault('attack_overrides', TRAINER_ATTACK)
  kwargs.setdefault('log', lambda msg: None)
  return train_defense(
      method, teacher=teacher, logdir=str(logdir), batch_size=4,
      stream=_stream(), config=SMALL,
      data_dir=str(DATA_DIR), save_every=1, fit_kmeans=False,
      progress=False, **kwargs)


def _read(prefix, name):
  return tf.train.load_checkpoint(prefix).get_tensor(name)


def test_hat_switches_after_n_ad_epochs_with_fresh_slots(tmp_path,
                                                         small_teacher):
  teacher_path, _ = small_teacher
  _defend('hat', tmp_path / 'hat', teacher_path, ad_epochs=1, at_epochs=1)
  ckpt = tmp_path / 'hat' / 'ckpt'
  # 2 steps per epoch: AD at steps 1-2, AT at steps 3-4.
  switch = str(ckpt / 'ckpt-2')
  assert _read(switch, 'phase/.ATTRIBUTES/VARIABLE_VALUE') == 1
  assert _read(switch, 'optimizer/step/.ATTRIBUTES/VARIABLE_VALUE') == 2
  slots = [n for n in tf.train.list_variables(switch)
           if n[0].startswith('optimizer/ms/')]
  assert slots and all(np.all(_read(switch, n) == 1.) for n, _ in slots)
  # The momentum slot restarts too, at 0 (every step moves it: see the
  # last checkpoint below).
  moms = [n for n, _ in tf.train.list_variables(switch)
          if n.startswith('optimizer/mom/')]
  assert moms and all(np.all(_read(switch, n) == 0.) for n in moms)
  last = str(ckpt / 'ckpt-4')
  assert _read(last, 'optimizer/step/.ATTRIBUTES/VARIABLE_VALUE') == 4
  assert not all(np.all(_read(last, n) == 1.) for n, _ in slots)
  assert any(np.any(_read(last, n) != 0.) for n in moms)
  # Every second batch is adversarial, across the phase boundary.
  import json  # pylint: disable=g-import-not-at-top
  records = [json.loads(line) for line in open(tmp_path / 'hat' / 'log.jsonl')
             if 'eval' not in line]
  assert [(r['step'], r['adversarial']) for r in records
          if r.get('adversarial')] == [(2, 1.), (4, 1.)]
  assert 'distillation_loss' in [r for r in records if r['step'] == 2][0]
  # The run folder reads as a plain SCAE checkpoint.
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  loaded = loading.load_model(str(tmp_path / 'hat'))
  assert loaded.config.architecture() == SMALL.architecture()


def test_ntat_starts_from_the_teacher_with_a_fresh_optimizer(tmp_path,
                                                             small_teacher):
  teacher_path, teacher_model = small_teacher
  _defend('ntat', tmp_path / 'ntat', teacher_path, at_epochs=1)
  # By hand: the teacher's weights, a fresh TF1 RMSProp at step 0 with the
  # constant rate (the code's AT), one AT step on the first (clean) batch.
  student = SCAE(SMALL)
  for mine, theirs in zip(student.variables, teacher_model.variables):
    mine.assign(theirs)
  recipe = trainer._recipe(batch_size=4).replace(lr_decay=False)  # pylint: disable=protected-access
  opt = TF1RMSProp.for_recipe(student.trainable_variables, recipe)
  assert opt.lr_decay is False and int(opt.step.numpy()) == 0
  clean = lambda m, b, c: _batch(b[0], b[1], b[0])
  step = training.make_train_step(
      student, opt, objectives.adversarial_training_objective, noise=False,
      seed=0, prepare=clean)
  images, labels = _stream().batch(0)
  step(tf.constant(images), tf.constant(labels))
  first = str(tmp_path / 'ntat' / 'ckpt' / 'ckpt-1')
  restored = SCAE(SMALL)
  tf.train.Checkpoint(model=restored).read(first).expect_partial()
  for a, b in zip(restored.variables, student.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)


class _Resolved(Exception):
  pass


def test_hat_from_the_teacher_is_a_labelled_deviation(tmp_path, small_teacher,
                                                      monkeypatch):
  teacher_path, teacher_model = small_teacher
  _defend('hat', tmp_path / 'hat', teacher_path, init='teacher', ad_epochs=1,
          at_epochs=1, max_train_steps=1)
  # By hand: the teacher's weights, the AD phase's TF1 RMSProp (decayed
  # rate), one Eq. 8 step on the first (clean) batch against the teacher.
  student = SCAE(SMALL)
  for mine, theirs in zip(student.variables, teacher_model.variables):
    mine.assign(theirs)
  recipe = trainer._recipe(batch_size=4).replace(lr_decay=True)  # pylint: disable=protected-access
  opt = TF1RMSProp.for_recipe(student.trainable_variables, recipe)
  clean = lambda m, b, c: _batch(b[0], b[1], b[0])
  step = training.make_train_step(
      objectives.StudentTeacher(student, teacher_model), opt,
      objectives.distillation_objective(), noise=False, seed=0,
      prepare=clean)
  images, labels = _stream().batch(0)
  step(tf.constant(images), tf.constant(labels))
  restored = SCAE(SMALL)
  tf.train.Checkpoint(model=restored).read(
      str(tmp_path / 'hat' / 'ckpt' / 'ckpt-1')).expect_partial()
  for a, b in zip(restored.variables, student.variables):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
  import json  # pylint: disable=g-import-not-at-top
  settings = json.load(open(tmp_path / 'hat' / 'run.json'))
  assert settings['init'] == 'teacher'
  # The paper's generator writes no key: runs made before the option resume.
  assert 'generator' not in settings
  assert ("the student starts from the teacher's weights instead of from "
          'scratch') in ' '.join(settings['deviations'])
  # From scratch, the paper's start, the student is not the teacher. (Its
  # run.json is written before the student is built: stopped there, it
  # saves a trace of the HAT step; test_hat_switches_after_n_ad_epochs_with_
  # fresh_slots trains HAT from scratch.)
  def stop(*args, **kwargs):
    raise _Resolved()

  monkeypatch.setattr(trainer, '_build', stop)
  with pytest.raises(_Resolved):
    _defend('hat', tmp_path / 'scratch', teacher_path, ad_epochs=1,
            at_epochs=1, max_train_steps=1)
  settings = json.load(open(tmp_path / 'scratch' / 'run.json'))
  assert settings['init'] == 'scratch'
  assert not any('starts from' in d for d in settings['deviations'])


def test_margin_at_is_labelled_and_trains_on_pgd_batches(tmp_path,
                                                        small_teacher):
  teacher_path, _ = small_teacher
  _defend('ntat', tmp_path / 'margin', teacher_path, at_epochs=1,
          generator='margin_pgd', attack_overrides=dict(steps=2))
  import json  # pylint: disable=g-import-not-at-top
  settings = json.load(open(tmp_path / 'margin' / 'run.json'))
  assert settings['generator'] == 'margin_pgd'
  assert (settings['attack']['eps'], settings['attack']['steps']) == (2., 2)
  assert any(d.startswith('margin AT') for d in settings['deviations'])
  assert any(d == 'margin_pgd attack with steps=2'
             for d in settings['deviations'])
  records = [json.loads(line) for line in
             open(tmp_path / 'margin' / 'log.jsonl') if 'eval' not in line]
  second = [r for r in records if r['step'] == 2][0]
  assert second['adversarial'] == 1. and 'attack_success_rate' in second


@pytest.mark.parametrize('kwargs, message', [
    (dict(method='pgd'), 'Unknown method'),
    (dict(method='hat', init='student', teacher='t'), 'Unknown init'),
    (dict(method='at', init='teacher'), 'at --init=teacher needs --teacher'),
    (dict(method='ad'), 'needs --teacher'),
    (dict(method='at', ad_epochs=3), 'ad_epochs does not apply'),
    (dict(method='at', lr_schedule='cosine'), 'Unknown lr_schedule'),
    (dict(method='at', ad_target='noise'), "unknown ad_target='noise'"),
    (dict(method='hat', epochs=3, teacher='t'), 'epochs does not apply'),
    (dict(method='ntat', epochs=3, at_epochs=2, teacher='t'),
     'not both'),
    (dict(method='at', teacher='t'), 'takes no --teacher'),
    (dict(method='at', preset='fast'), 'Unknown preset'),
    (dict(method='at', clean_batches=-1), '--k must be'),
    (dict(method='ad', ad_weight=1.5, teacher='t'), 'lambda_ must be'),
    (dict(method='at', max_train_steps=0), 'max_train_steps must be'),
    (dict(method='ad', teacher='no/such/teacher'), 'No checkpoint'),
])
def test_bad_defence_settings_fail_before_any_work(tmp_path, kwargs,
                                                   message):
  # What the scripts report as one `error:` line (scae_tf.cli).
  with pytest.raises((ValueError, OSError), match=message):
    train_defense(logdir=str(tmp_path / 'run'), **kwargs)
  assert not (tmp_path / 'run').exists()


def test_a_teacher_of_another_config_or_data_set_or_a_corrupt_one_is_refused(
    tmp_path, small_teacher):
  teacher_path, _ = small_teacher
  kwargs = dict(logdir=str(tmp_path / 'run'), stream=_stream(), batch_size=4,
                log=lambda msg: None)
  with pytest.raises(checkpoints.CheckpointMismatchError):
    train_defense('ad', teacher=teacher_path, config=configs.tiny_config(),
                  **kwargs)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='a mnist model .* on fashion_mnist'):
    train_defense('ad', teacher=teacher_path, config=SMALL,
                  dataset='fashion_mnist', **kwargs)
  corrupt = tmp_path / 'corrupt'
  corrupt.mkdir()
  for name in os.listdir(os.path.dirname(teacher_path)):
    content = open(os.path.join(os.path.dirname(teacher_path), name),
                   'rb').read()
    if name.endswith('.data-00000-of-00001'):
      content = content[:len(content) // 2]
    (corrupt / name).write_bytes(content)
  with pytest.raises(checkpoints.CorruptCheckpointError):
    train_defense('ad', teacher=str(corrupt / 'model'), config=SMALL,
                  **kwargs)
  assert not (tmp_path / 'run').exists()


def test_defence_script_reports_a_missing_teacher_in_one_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  proc = subprocess.run(
      [sys.executable, str(REPO / 'run' / 'train_defense.py'), '--method=hat',
       f'--logdir={tmp_path / "run"}'], capture_output=True, text=True,
      timeout=300)
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1] == (
      'error: --method=hat needs --teacher.')
  assert not (tmp_path / 'run').exists()


def _checkpoint_tensors(prefix):
  """Every saved value of a run's checkpoint but TF's save counter (a count
  of saves, which a killed run makes more of)."""
  reader = tf.train.load_checkpoint(prefix)
  return {name: reader.get_tensor(name)
          for name in reader.get_variable_to_shape_map()
          if not name.startswith('save_counter')}


@pytest.mark.slow  # 108 s on 2 idle cores: 4 processes each trace the attack
def test_hat_killed_mid_phase_resumes_bit_identical(tmp_path, small_teacher):
  """SIGKILL in the middle of an epoch of each phase (after step 3 of the
  AD phase, after step 7 of the AT phase), then the same command: the run
  ends exactly as an uninterrupted one, weights, RMSProp slots, phase,
  adversarial counter and generator state included."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  from conftest import REPO  # pylint: disable=g-import-not-at-top
  teacher_path, _ = small_teacher
  script = str(REPO / 'tests' / 'helpers' / 'defence_run.py')
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (
                 str(REPO), os.environ.get('PYTHONPATH')))))

  def run(logdir, *kill):
    return subprocess.run(
        [sys.executable, script, str(logdir), teacher_path, *kill], env=env,
        capture_output=True, text=True, timeout=600)

  for kill in ('3', '7'):
    proc = run(tmp_path / 'killed', kill)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  # The kill came before step 7's save: the folder's newest is step 6.
  assert tf.train.latest_checkpoint(str(tmp_path / 'killed' / 'ckpt')) \
      .endswith('ckpt-6')
  for logdir in (tmp_path / 'killed', tmp_path / 'whole'):
    proc = run(logdir)
    assert proc.returncode == 0, proc.stderr[-2000:]
  got = _checkpoint_tensors(str(tmp_path / 'killed' / 'ckpt' / 'ckpt-8'))
  want = _checkpoint_tensors(str(tmp_path / 'whole' / 'ckpt' / 'ckpt-8'))
  assert sorted(got) == sorted(want)
  assert any(n.startswith('adversarial/generator') for n in want)
  assert any(n.startswith('optimizer/ms') for n in want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  # And the kills changed the run: its log has the replayed steps once.
  import json  # pylint: disable=g-import-not-at-top
  steps = [json.loads(line)['step'] for line in
           open(tmp_path / 'killed' / 'log.jsonl') if '"eval"' not in line]
  assert steps == sorted(set(steps))


def test_max_train_steps_stops_evaluates_and_the_same_command_resumes(
    tmp_path):
  logs = []
  kwargs = dict(config=SMALL, batch_size=4, attack_overrides=TRAINER_ATTACK,
                stream=_stream(), eval_data=lambda: [_stream().batch(0)],
                save_every=1000, fit_kmeans=False, progress=False,
                log=logs.append, logdir=str(tmp_path / 'at'), epochs=2)
  train_defense('at', max_train_steps=3, **kwargs)
  ckpt = str(tmp_path / 'at' / 'ckpt')
  assert tf.train.latest_checkpoint(ckpt).endswith('ckpt-3')
  assert 'stopped at step 3 of 4 (--max_train_steps); the same command ' \
         'without it resumes the run' in logs
  # 2 epochs instead of AT's 100: a deviation, said at the start, in
  # run.json and under the accuracy plot.
  assert 'DEVIATION from the paper: AT 2 epochs instead of 100' in logs
  import json  # pylint: disable=g-import-not-at-top
  settings = json.load(open(tmp_path / 'at' / 'run.json'))
  assert settings['deviations'][0] == 'AT 2 epochs instead of 100'
  assert (tmp_path / 'at' / 'accuracy.png').stat().st_size > 0
  logs.clear()
  train_defense('at', **kwargs)
  assert tf.train.latest_checkpoint(ckpt).endswith('ckpt-4')
  assert any(line.startswith('resuming at step 3') for line in logs)


def test_a_phase_length_can_change_until_the_run_has_passed_its_end():
  """By hand, 10 steps an epoch: HAT planned 1 + 1 epochs (switch at 10)."""
  hat = lambda ad, at: [methods.Phase('ad', ad, True),
                        methods.Phase('at', at, False)]
  assert methods.phase_ends(hat(1, 2), 10) == [10, 30]
  # Before the switch, the AD phase may grow, or shrink to the run's step.
  assert methods.length_change_error(hat(1, 1), hat(3, 1), 7, 10) is None
  assert methods.length_change_error(hat(1, 1), hat(1, 1), 10, 10) is None
  assert methods.length_change_error(hat(2, 1), hat(1, 1), 10, 10) is None
  assert methods.length_change_error(hat(2, 1), hat(1, 1), 11, 10) == (
      'phase 1 (AD) would end at step 10, but the run has trained it to '
      'step 11')
  # After it, the switch is fixed; the last phase's length is free.
  assert methods.length_change_error(hat(1, 1), hat(2, 1), 12, 10) == (
      'phase 1 (AD) ended at step 10 and the run is at step 12: its length '
      'can no longer change (asked: 2 epochs, ending at step 20)')
  assert methods.length_change_error(hat(1, 1), hat(1, 5), 12, 10) is None
  assert methods.length_change_error(hat(1, 5), hat(1, 1), 40, 10) is None
  at = lambda n: [methods.Phase('at', n, False)]
  assert methods.length_change_error(at(100), at(2), 500, 10) is None


# 61 s on 2 idle cores (three HAT runs); the rule itself is checked by hand
# above in the default suite, and the teacher's extension in test_teacher.py.
@pytest.mark.slow
def test_a_defence_is_extended_bit_identically_and_other_changes_refused(
    tmp_path, small_teacher):
  """HAT 1 + 1 epochs (2 steps each) run to its end, then asked for 1 + 2:
  it resumes to step 6, bit for bit a 1 + 2 run made at once; asked for
  2 + 2 once past the switch, it is refused, as is another learning rate,
  each in one line naming what changed."""
  import json  # pylint: disable=g-import-not-at-top
  teacher_path, _ = small_teacher
  logs = []
  _defend('hat', tmp_path / 'grown', teacher_path, ad_epochs=1, at_epochs=1)
  _defend('hat', tmp_path / 'grown', teacher_path, ad_epochs=1, at_epochs=2,
          log=logs.append)
  _defend('hat', tmp_path / 'whole', teacher_path, ad_epochs=1, at_epochs=2)
  assert ("the run's length changes from ad 1 + at 1 to ad 1 + at 2 epochs "
          '(newest checkpoint: step 4); run.json keeps every length asked '
          'for') in logs
  got = _checkpoint_tensors(str(tmp_path / 'grown' / 'ckpt' / 'ckpt-6'))
  want = _checkpoint_tensors(str(tmp_path / 'whole' / 'ckpt' / 'ckpt-6'))
  assert sorted(got) == sorted(want)
  for name in want:
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  saved = json.load(open(tmp_path / 'grown' / 'run.json'))
  assert [length['phase_epochs'] for length in saved['lengths']] == [
      [1, 1], [1, 2]]
  assert [p['epochs'] for p in saved['phases']] == [1, 2]
  with pytest.raises(training.RunMismatchError,
                     match=r'phase 1 \(AD\) ended at step 2 and the run is '
                           r'at step 6'):
    _defend('hat', tmp_path / 'grown', teacher_path, ad_epochs=2,
            at_epochs=2)
  with pytest.raises(training.RunMismatchError,
                     match=r'other settings \(recipe.learning_rate: 3e-05 '
                           r'-> 0.001\)\.'):
    _defend('hat', tmp_path / 'grown', teacher_path, ad_epochs=1,
            at_epochs=3, learning_rate=1e-3)
