"""Times the SCAE port: training step, forward pass, attack-style step.

  python benchmarks/step_costs.py --batch_size=100 --repeats=10 > bench.json

Prints JSON: median seconds per call (after a warm-up call that compiles),
with and without XLA (`jit_compile`), for
  * train_step: forward + backward + TF1 RMSProp update (what training runs);
  * forward: the loss forward pass (full=False);
  * attack_step: forward + gradient w.r.t. the input image of an
    attack-style objective (capsule presences + L2), i.e. one attack
    iteration's model cost;
  * the split of the forward pass over part encoder, template decoder and
    object capsules (Set Transformer + capsule layer + likelihood), and the
    backward share (train_step - forward);
  * cnn_fwd_bwd: the part CNN alone, forward + backward, the yardstick of
    the speed target (train_step <= 3 x cnn_fwd_bwd).
Without XLA (as the defences run), also the real attack and defence steps:
  * attack_iteration: `CapsuleAttack.in_graph` of the defences' preset
    (paper_train, target PosL) with one outer iteration of --attack_inner
    steps, compiled, divided by --attack_inner. It includes the clean pass
    and the final test pass, so it errs high by two forward passes per
    --attack_inner iterations. Target: <= 1.0 x cnn_fwd_bwd;
  * adversarial_batch: one AT step on an adversarial batch as the defences
    run it (`AdversarialBatches` as `prepare` of `make_train_step`, the
    whole paper_train attack, 5 x 30 = 150 iterations, then the Eq. 7
    step); clean_batch: the same step on a clean batch; ad_clean_batch:
    AD's step on a clean batch (the student's step plus a frozen teacher's
    forward pass). Target: adversarial_batch <= 1.05 x (150
    attack_iteration + clean_batch);
  * projections: one AT epoch (600 batches of 100, every 2nd adversarial)
    and the paper's HAT run (50 AD + 50 AT epochs), in hours.
Without XLA (as the attacks run), the adaptive attack (PGD-L2 on the
classifier's margin) against the paper's (--adaptive), on each target T of
PosL (the defences') and PosK (a cosine k-means on the posterior features,
one cluster per class, with random centres: its cost does not depend on
where the centres lie):
  * attack_iteration_T: one compiled outer iteration of the paper_train
    capsule attack against T (`CapsuleAttack._outer`: --attack_inner steps,
    then the test pass of the last step) divided by --attack_inner;
  * pgd_iteration_T: one compiled PGD-L2 restart against T
    (`PGDAttack._restart`: --attack_inner steps, then the scoring pass of
    the last point) divided by --attack_inner;
  * pgd_iteration_over_attack_iteration_T: their ratio. Target (issue 13):
    <= 1.0 on both targets.
  * apgd_iteration_T and apgd_iteration_over_attack_iteration_T: the same
    with APGD's step schedule (`pgd_l2_min`'s).
  Both iterations err high by one forward pass per --attack_inner steps,
  so the ratio is like for like. attack_iteration_PosL leaves out the
  clean pass that attack_iteration above includes.
--only=attacks times only these attack iterations (no model or defence
steps, XLA off).
Inputs are random images; the weights are a fresh init of the config.
`native_resampler` says whether the compiled resampler kernel was used
(scae_tf/kernels; SCAE_TF_NATIVE=0 times the pure-TF fallback).
"""

import json
import os
import platform
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

# The benchmarks' shared helpers (also when a test loads this file by path).
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import alternating_medians  # pylint: disable=g-import-not-at-top,wrong-import-position
from timing import capsule_outer_call  # pylint: disable=g-import-not-at-top,wrong-import-position
from timing import cpu_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from timing import random_batch  # pylint: disable=g-import-not-at-top,wrong-import-position
from timing import tf_numpy  # pylint: disable=g-import-not-at-top,wrong-import-position

flags.DEFINE_string('config', 'mnist', 'Named config.')
flags.DEFINE_integer('batch_size', 100, 'Batch size.')
flags.DEFINE_integer('repeats', 10, 'Timed calls per measurement.')
flags.DEFINE_list('xla', ['off', 'on'], 'XLA modes to time: off, on.')
flags.DEFINE_bool('noise', True, 'Train step with the config noise.')
flags.DEFINE_integer('attack_inner', 30, 'Attack iterations per timed call '
                     'of attack_iteration.')
flags.DEFINE_integer('defence_repeats', 5, 'Timed rounds of the attack and '
                     'defence steps (an adversarial batch runs 150 attack '
                     'iterations).')
flags.DEFINE_bool('defences', True, 'Time the attack and the defence steps '
                  '(XLA off only).')
flags.DEFINE_bool('adaptive', True, 'Time a PGD-L2 step against a capsule-'
                  'attack step on PosL and PosK (XLA off only).')
flags.DEFINE_enum('only', 'all', ['all', 'attacks'], 'attacks: time only the '
                  'attack iterations of --adaptive, nothing else.')
FLAGS = flags.FLAGS


def median_seconds(fn, *args, repeats=10):
  """Median wall time of fn(*args) over `repeats` calls, after one warm-up."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  tf_numpy(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    tf_numpy(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def build_functions(model, optimizer, jit, noise):
  """The timed computations, each a compiled tf.function."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf.training import make_train_step  # pylint: disable=g-import-not-at-top
  compiled = lambda f: tf.function(f, jit_compile=jit)
  cnn = model.part_encoder.cnn

  def cnn_fwd_bwd(images):
    with tf.GradientTape() as tape:
      out = tf.reduce_sum(cnn(images))
    return tape.gradient(out, cnn.trainable_variables)

  def part_encoder(images):
    return model.part_encoder(images)

  def template_decoder(part):
    rec = model.template_decoder(part.pose, part.presence, part.feature)
    return rec.pdf.log_prob(tf.zeros_like(rec.transformed_templates[:, 0]))

  def object_capsules(images, part):
    """Everything between the part capsules and the capsule likelihood."""
    del images
    c = model.config
    templates = model.template_decoder.make_templates(part.feature)
    batch = tf.shape(part.pose)[0]
    set_input = tf.concat([
        part.pose, 1. - part.presence[..., None], part.feature,
        tf.reshape(templates, [batch, c.n_part_caps, -1])], -1)
    h = model.set_transformer(set_input, part.presence)
    return model.object_capsules(h, part.pose, part.presence,
                                 full=False).likelihood.log_prob

  def forward(images, labels):
    return model.loss(model.forward(images, labels, full=False))

  def attack_step(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      out = model.forward(images, full=False)
      loss = (tf.reduce_sum(out.caps_presence_prob ** 2)
              + tf.reduce_sum(out.posterior_presence ** 2)
              + .5 * tf.reduce_sum(images ** 2))
    return tape.gradient(loss, images)

  return dict(
      cnn_fwd_bwd=compiled(cnn_fwd_bwd),
      part_encoder=compiled(part_encoder),
      template_decoder=compiled(template_decoder),
      object_capsules=compiled(object_capsules),
      forward=compiled(forward),
      attack_step=compiled(attack_step),
      train_step=make_train_step(model, optimizer, noise=noise,
                                 jit_compile=jit))


#: MNIST's training split in batches of 100, and the paper's HAT schedule.
BATCHES_PER_EPOCH = 600
HAT_EPOCHS = dict(ad=50, at=50)


def defence_functions(config, recipe, inner):
  """The attack and the defence steps, built as the defences build them."""
  from attacks import evasion  # pylint: disable=g-import-not-at-top
  from defenses import objectives  # pylint: disable=g-import-not-at-top
  from defenses.adversarial_batches import AdversarialBatches  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top
  from scae_tf.training import make_train_step  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  config = config.without_noise()
  student, teacher = SCAE(config), SCAE(config)
  attack = evasion.make_attack(student, 'paper_train', outer_iterations=1,
                               inner_iterations=inner)
  rng = tf.random.Generator.from_seed(0)
  fns = dict(attack_inner_loop=tf.function(
      lambda images, labels: attack.in_graph(images, labels, rng)))
  at_loss = (lambda m, b, c: objectives.adversarial_training_objective(
      student, b, c))
  pair = objectives.StudentTeacher(student, teacher)
  # clean_batches=0: every batch adversarial; a huge k: none is.
  for name, model, loss, clean_batches in (
      ('adversarial_batch', student, at_loss, 0),
      ('clean_batch', student, at_loss, 10 ** 9),
      ('ad_clean_batch', pair, objectives.distillation_objective(), 10 ** 9)):
    batches = AdversarialBatches(model, attacked=lambda _: student,
                                 clean_batches=clean_batches)
    optimizer = TF1RMSProp.for_recipe(student.trainable_variables, recipe)
    fns[name] = make_train_step(model, optimizer, loss_fn=loss, noise=False,
                                prepare=batches)
  return fns


#: The targets of the adaptive comparison: the defences' and the paper's.
ADAPTIVE_TARGETS = ('PosL', 'PosK')


def random_kmeans(config, seed=0):
  """A cosine k-means on the posterior features, one cluster per class, with
  random centres: PosK's scores and margin cost the same wherever the centres
  lie, and fitting one on random images would be no more meaningful."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scae_tf.kmeans import KMeansClassifier  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return KMeansClassifier(rng.random((config.num_classes, config.n_obj_caps)),
                          'cosine', 'posterior', np.arange(config.num_classes))


#: The PGD step schedules timed: pgd_l2's fixed step, pgd_l2_min's APGD.
PGD_SCHEDULES = dict(pgd='fixed', apgd='apgd')


def adaptive_calls(model, kmeans, images, labels, steps,
                   targets=ADAPTIVE_TARGETS):
  """{f'{attack}_{target}': (compiled fn, args)}: per target on `model`
  (PosK through `kmeans`), one outer iteration of the paper_train capsule
  attack and one PGD-L2 restart, both of `steps` steps, with their inputs
  prepared as the attacks prepare them."""
  # pylint: disable=protected-access
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import classifiers  # pylint: disable=g-import-not-at-top
  from attacks import pgd  # pylint: disable=g-import-not-at-top

  x = tf.convert_to_tensor(images, tf.float32)
  y = tf.cast(labels, tf.int64)
  batch = int(x.shape[0])
  calls = {}
  for name in targets:
    target = classifiers.make_classifier(model, name, kmeans)
    calls[f'attack_{name}'] = capsule_outer_call(target, x, y, steps)
    for kind, schedule in PGD_SCHEDULES.items():
      margin_attack = pgd.PGDAttack(target, 'pgd_l2', steps=steps,
                                    restarts=1, schedule=schedule)
      margin, pred = margin_attack._score(x, y)
      eps = tf.fill([batch], np.float32(margin_attack.config.eps))
      calls[f'{kind}_{name}'] = (margin_attack._restart, (
          x, y, eps, x, margin, tf.not_equal(pred, y), x, tf.zeros([batch])))
  return calls


def adaptive_ratios(seconds, steps):
  """Per-step seconds of {f'{attack}_{target}': seconds per call} and each
  target's pgd_iteration_over_attack_iteration."""
  t = {}
  for name in ADAPTIVE_TARGETS:
    attack = seconds[f'attack_{name}'] / steps
    t[f'attack_iteration_{name}'] = attack
    for kind in PGD_SCHEDULES:
      margin_attack = seconds[f'{kind}_{name}'] / steps
      t[f'{kind}_iteration_{name}'] = margin_attack
      t[f'{kind}_iteration_over_attack_iteration_{name}'] = (
          margin_attack / attack)
  return t


def time_adaptive(config, images, labels):
  """Seconds of one capsule-attack and one PGD iteration per target, all
  alternated, and their ratios."""
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  calls = adaptive_calls(SCAE(config.without_noise()), random_kmeans(config),
                         images, labels, FLAGS.attack_inner)
  return adaptive_ratios(alternating_medians(calls, FLAGS.defence_repeats),
                         FLAGS.attack_inner)


def time_defences(config, recipe, images, labels, cnn_fwd_bwd):
  """Seconds of the attack iteration and the defence steps (alternated with
  the CNN yardstick), the checks of the two targets and the projected AT
  epoch and HAT run in hours."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import evasion  # pylint: disable=g-import-not-at-top
  preset = evasion.get_config('paper_train')
  n_attack = preset.outer_iterations * preset.inner_iterations
  fns = defence_functions(config, recipe, FLAGS.attack_inner)
  args = (images, tf.cast(labels, tf.int64))
  t = alternating_medians(dict(
      cnn_fwd_bwd=(cnn_fwd_bwd, (images,)),
      attack_inner_loop=(fns['attack_inner_loop'], args),
      clean_batch=(fns['clean_batch'], args),
      ad_clean_batch=(fns['ad_clean_batch'], args),
      adversarial_batch=(fns['adversarial_batch'], args),
  ), FLAGS.defence_repeats)
  t['attack_iteration'] = t.pop('attack_inner_loop') / FLAGS.attack_inner
  t = {k if k != 'cnn_fwd_bwd' else 'cnn_fwd_bwd_alternated': v
       for k, v in t.items()}
  t['attack_iteration_over_cnn_fwd_bwd'] = (
      t['attack_iteration'] / t['cnn_fwd_bwd_alternated'])
  t['adversarial_batch_over_iterations_plus_step'] = t[
      'adversarial_batch'] / (n_attack * t['attack_iteration']
                              + t['clean_batch'])
  half = BATCHES_PER_EPOCH // 2
  attack_cost = t['adversarial_batch'] - t['clean_batch']
  at_epoch = half * (t['adversarial_batch'] + t['clean_batch'])
  ad_epoch = half * (attack_cost + 2 * t['ad_clean_batch'])
  hours = dict(at_epoch=at_epoch / 3600,
               hat_run=(HAT_EPOCHS['at'] * at_epoch
                        + HAT_EPOCHS['ad'] * ad_epoch) / 3600)
  return t, hours


def time_model(config, recipe, images, labels, jit):
  """Seconds of the model's steps and their ratios, and the compiled CNN
  yardstick."""
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top
  model = SCAE(config)
  optimizer = TF1RMSProp.for_recipe(model.trainable_variables, recipe)
  fns = build_functions(model, optimizer, jit, FLAGS.noise)
  part = model.part_encoder(images)
  r = FLAGS.repeats
  t = dict(
      cnn_fwd_bwd=median_seconds(fns['cnn_fwd_bwd'], images, repeats=r),
      part_encoder=median_seconds(fns['part_encoder'], images, repeats=r),
      template_decoder=median_seconds(fns['template_decoder'], part,
                                      repeats=r),
      object_capsules=median_seconds(fns['object_capsules'], images, part,
                                     repeats=r),
      forward=median_seconds(fns['forward'], images, labels, repeats=r),
      attack_step=median_seconds(fns['attack_step'], images, repeats=r),
      train_step=median_seconds(fns['train_step'], images, labels,
                                repeats=r),
  )
  t['backward_and_update'] = t['train_step'] - t['forward']
  t['train_step_over_cnn_fwd_bwd'] = t['train_step'] / t['cnn_fwd_bwd']
  t['attack_step_over_train_step'] = t['attack_step'] / t['train_step']
  return t, fns['cnn_fwd_bwd']


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf import recipes  # pylint: disable=g-import-not-at-top
  from scae_tf import kernels  # pylint: disable=g-import-not-at-top

  config = configs.get_config(FLAGS.config)
  recipe = recipes.get_recipe(config.default_recipe).replace(
      batch_size=FLAGS.batch_size)
  images, labels = random_batch(config, FLAGS.batch_size)
  result = dict(config=config.name, batch_size=FLAGS.batch_size,
                repeats=FLAGS.repeats, tensorflow=tf.__version__,
                machine=platform.processor() or platform.machine(),
                cpu=cpu_model(),
                cpu_count=os.cpu_count(),
                devices=[d.device_type for d in tf.config.list_physical_devices()],
                native_resampler=kernels.native_status(),
                seconds={})
  for mode in FLAGS.xla:
    if mode not in ('on', 'off'):
      raise app.UsageError(f'--xla takes on/off, got {mode!r}')
  everything = FLAGS.only == 'all'
  for mode in FLAGS.xla if everything else ['off']:
    t = {}
    if everything:
      t, cnn_fwd_bwd = time_model(config, recipe, images, labels,
                                  mode == 'on')
    if everything and FLAGS.defences and mode == 'off':
      defence, hours = time_defences(config, recipe, images, labels,
                                     cnn_fwd_bwd)
      t.update(defence)
      result['projected_hours'] = {k: round(v, 2) for k, v in hours.items()}
    if (FLAGS.adaptive or not everything) and mode == 'off':
      t.update(time_adaptive(config, images, labels))
    result['seconds'][f'xla_{mode}'] = {k: round(v, 4) for k, v in t.items()}
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  app.run(main)
