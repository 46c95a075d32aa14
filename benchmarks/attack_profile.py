"""Where one attack iteration's time goes (issue 21, item 2).

  python benchmarks/attack_profile.py --xla=off,on --inner=10 --rounds=5

The iteration timed is the defences' generator: the compiled loop of the
paper_train attack against PosL (`CapsuleAttack._outer`: --inner signed
steps, then the test pass of the last step; divided by --inner), with the
training graph's input gradient ('code'), batch --batch_size, fresh
MNIST-config weights without noise and random images. Per XLA mode
(`jit_compile` of the attack loop and of every piece below) it prints two
tables:

1. Wall time, by difference of compiled pieces timed alternately in
   --rounds rounds (`timing.alternating_times`; median and min): the part
   CNN's forward, the CNN's forward + the image's gradient (no filter
   gradients), the target's forward (`capsule_features` + probe), the
   target's forward + the image's gradient of the capsule loss (the model
   pass of an iteration), that pass --inner times in a `tf.while_loop`
   (under XLA also: the pass compiled alone, called --inner times by an
   uncompiled loop), and the iteration. Rows are their differences: CNN forward, CNN
   input-gradient pass, capsule layers forward and backward (part heads,
   templates, Set Transformer, object capsules, capsule likelihood,
   probe), what the loop adds to the pass, and the attack's own work (tanh
   map, losses, success bookkeeping, signed step). `step_costs.py`'s
   yardstick cnn_fwd_bwd (forward + filter gradients) gives the ratio of
   the issue's target. A difference of medians is only as good as the
   machine is quiet: on a busy one, read the mins too.
2. Op time, from --profile_calls calls under `tf.profiler.experimental`
   (per op the median over the calls): every op a call ran, attributed by
   its TensorFlow name scope (under XLA: by the TF op an HLO instruction
   comes from; a fusion counts for its root op) to those parts, forward
   and backward apart, plus what the objective does not need: filter
   gradients (Conv2DBackpropFilter, BiasAddGrad), the template decoder's
   rendering, the sparsity losses and the other probe. Op times on the two
   threads add up, so their sum may exceed the wall time; the call's time
   outside its compiled function (Python, dispatch) is shown apart. The
   final test pass is included (one forward per --inner iterations), as in
   `step_costs.py`'s iterations.
"""

import collections
import glob
import json
import os
import re
import sys
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  """The script's flags (defined when it runs, not when a test imports it:
  the benchmarks share absl's global flags)."""
  flags.DEFINE_integer('batch_size', 100, 'Images per call.')
  flags.DEFINE_integer('inner', 10, 'Attack iterations per timed call.')
  flags.DEFINE_integer('rounds', 5, 'Timed rounds of the alternated pieces.')
  flags.DEFINE_list('xla', ['off', 'on'], 'XLA modes: off, on.')
  flags.DEFINE_integer('profile_calls', 3, 'Profiled calls (0: no op-level '
                       'profile); per op, the median over them.')
  flags.DEFINE_string('json', None, 'Also write the numbers to this file.')


#: The parts of an iteration, in the tables' order.
PARTS = ('CNN', 'part capsule heads', 'templates (colour MLP)',
         'Set Transformer', 'object capsules', 'capsule likelihood',
         'probe', 'capsule glue (set input)', 'attack (tanh map, losses, '
         'record, step, loop)', 'filter gradients', 'not read by the '
         'objective')

#: Ops whose work the attack's objective does not need, by name: the
#: decoder's rendering and image likelihood, the sparsity losses, the prior
#: probe (PosL reads the posterior one), the capsule log-likelihood and
#: the deformation penalty.
UNNEEDED = re.compile(r'warp|resampler|imagemixture|rec_ll|sparsity|'
                      r'classification_probe_1|reducelogsumexp|l2loss',
                      re.IGNORECASE)
FILTER_GRADIENT_TYPES = re.compile(r'Conv2DBackpropFilter|BiasAddGrad')
#: Ops that only move data: layout conversions, concatenations, splits.
DATA_MOVEMENT_TYPES = re.compile(
    r'Transpose|Concat|Split|Pack|Unpack|Slice|BroadcastTo|Tile|Reshape|'
    r'Gather|Identity|ZerosLike|OnesLike|Fill|DynamicStitch')


def part_of(op_name, op_type):
  """(part, 'forward' or 'backward') of a TF op of the attack's loop."""
  name = re.sub(r'^(while/body/_\d+/|while/)+', '', op_name)
  backward = name.startswith('gradient_tape/')
  direction = 'backward' if backward else 'forward'
  if FILTER_GRADIENT_TYPES.search(op_type):
    return 'filter gradients', direction
  if UNNEEDED.search(name) or UNNEEDED.search(op_type):
    return 'not read by the objective', direction
  for scope, part in (('conv_net_2d', 'CNN'),
                      ('scae/part_encoder', 'part capsule heads'),
                      ('scae/template_decoder', 'templates (colour MLP)'),
                      ('scae/set_transformer', 'Set Transformer'),
                      ('capsule_likelihood', 'capsule likelihood'),
                      ('scae/object_capsules', 'object capsules'),
                      ('classification_probe', 'probe'),
                      ('scae/', 'capsule glue (set input)')):
    if scope in name:
      return part, direction
  return PARTS[8], direction


# --- the op-level profile ----------------------------------------------------

HLO_LINE = re.compile(r'^\s*(?:ROOT )?%(\S+) = (?:\S+|\(.*?\)) ([\w-]+)\(.*'
                      r'metadata=\{op_type="([^"]*)" op_name="([^"]*)"')
NOT_LEAVES = ('call', 'while', 'conditional', 'tuple', 'get-tuple-element',
              'parameter')


def hlo_ops(hlo_text):
  """{HLO instruction: (TF op name, TF op type)} of the leaf instructions
  (fusions, convolutions, dots...) of an optimized HLO module's text."""
  ops = {}
  for line in hlo_text.splitlines():
    m = HLO_LINE.match(line)
    if m and m.group(2) not in NOT_LEAVES:
      ops[m.group(1)] = (m.group(4), m.group(3))
  return ops


def read_xspace(logdir):
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  path = sorted(glob.glob(os.path.join(logdir, '**', '*.xplane.pb'),
                          recursive=True))[-1]
  space = xplane_pb2.XSpace()
  with open(path, 'rb') as f:
    space.ParseFromString(f.read())
  return next(p for p in space.planes if p.name == '/host:CPU')


def op_seconds(plane, hlo=None):
  """({(op name, op type): seconds}, seconds outside the compiled function,
  seconds of the whole call) of one profiled call: the TF ops (`name:type` events of the executor
  threads), or with `hlo` (`hlo_ops`) the XLA instructions, by the TF op
  they come from."""
  ops = collections.Counter()
  call = run = 0.
  for line in plane.lines:
    names = [(plane.event_metadata[e.metadata_id].name, e.duration_ps * 1e-12)
             for e in line.events]
    if any(name == 'TFE_Py_ExecuteCancelable' for name, _ in names):
      # The calling thread: the call, and the compiled function in it.
      for name, seconds in names:
        if name == 'KernelAndDeviceFunc::Run' or (
            name.startswith('__inference') and ':' in name):
          run = max(run, seconds)
        elif ':' not in name:
          call = max(call, seconds)
      continue
    for name, seconds in names:
      if hlo is not None:
        if name in hlo:
          ops[hlo[name]] += seconds
      elif name.count(':') == 1 and not name.startswith('__inference'):
        ops[tuple(name.split(':'))] += seconds
  return ops, max(call - run, 0.), call


def profile_calls(fn, args, jit, calls):
  """Per TF op, the median over `calls` profiled calls of the compiled
  `fn(*args)` of its seconds in a call: ({(part, direction): seconds},
  seconds outside the compiled function, {op: seconds} of the ten
  costliest ops, the calls' median seconds); parts['data movement'] is
  the time of the ops that only move data (`DATA_MOVEMENT_TYPES`), in
  whichever parts they are. The median drops what a busy machine adds to a few
  calls (an op descheduled for 50 ms)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from timing import tf_numpy  # pylint: disable=g-import-not-at-top
  tf_numpy(fn(*args))  # compiled before the trace
  hlo = (hlo_ops(fn.experimental_get_compiler_ir(*args)(
      stage='optimized_hlo')) if jit else None)
  runs, outside, walls = [], [], []
  for _ in range(calls):
    with tempfile.TemporaryDirectory() as logdir:
      tf.profiler.experimental.start(logdir)
      tf_numpy(fn(*args))
      tf.profiler.experimental.stop()
      ops, out, wall = op_seconds(read_xspace(logdir), hlo)
    runs.append(ops)
    outside.append(out)
    walls.append(wall)
  ops = {op: float(np.median([r.get(op, 0.) for r in runs]))
         for op in set().union(*runs)}
  parts = collections.Counter()
  for (op_name, op_type), seconds in ops.items():
    parts[part_of(op_name, op_type)] += seconds
  parts['data movement'] = sum(
      seconds for (_, op_type), seconds in ops.items()
      if DATA_MOVEMENT_TYPES.search(op_type))
  top = sorted(ops.items(), key=lambda kv: -kv[1])[:10]
  return (parts, float(np.median(outside)),
          {f'{name} ({kind})': s for (name, kind), s in top},
          float(np.median(walls)))


# --- the compiled pieces -----------------------------------------------------

def pieces(model, target, images, labels, inner, jit):
  """{name: (compiled fn, args)}: the attack iteration and the pieces whose
  differences split it."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import objectives  # pylint: disable=g-import-not-at-top
  from timing import capsule_outer_call  # pylint: disable=g-import-not-at-top
  compiled = lambda f: tf.function(f, jit_compile=jit)
  cnn = model.part_encoder.cnn
  attack, attack_args = capsule_outer_call(target, images, labels, inner,
                                           jit_compile=jit)
  x, subset = attack_args[0], attack_args[3]

  def cnn_forward(images):
    return cnn(images)

  def cnn_input_gradient(images):
    with tf.GradientTape() as tape:
      tape.watch(images)
      out = tf.reduce_sum(cnn(images))
    return tape.gradient(out, images)

  def model_pass(images):
    return target(images)

  def model_pass_gradient(images, subset):
    # As each iteration: the target under a tape watching the image.
    with tf.GradientTape() as tape:
      tape.watch(images)
      features, pred = target(images)
      loss = tf.reduce_sum(objectives.capsule_loss(
          features, subset, target.feature_kind, target.n_part_caps))
    return pred, tape.gradient(loss, images)

  def loop_of(pass_fn):
    # `inner` passes in a tf.while_loop, each depending on the last
    # (0 * gradient: the same values as the single pass).
    def loop(images, subset):
      def body(i, images):
        return i + 1, images + 0. * pass_fn(images, subset)[1]
      return tf.while_loop(lambda i, _: i < inner, body, (0, images))[1]
    return loop

  def cnn_fwd_bwd(images):  # step_costs' yardstick: filter gradients
    with tf.GradientTape() as tape:
      out = tf.reduce_sum(cnn(images))
    return tape.gradient(out, cnn.trainable_variables)

  calls = dict(
      cnn_forward=(compiled(cnn_forward), (x,)),
      cnn_input_gradient=(compiled(cnn_input_gradient), (x,)),
      model_pass=(compiled(model_pass), (x,)),
      model_pass_gradient=(compiled(model_pass_gradient), (x, subset)),
      model_pass_gradient_loop=(compiled(loop_of(model_pass_gradient)),
                                (x, subset)),
      attack_iteration=(attack, attack_args),
      cnn_fwd_bwd=(compiled(cnn_fwd_bwd), (x,)),
  )
  if jit:
    # The pass compiled alone, called by an uncompiled loop: one XLA
    # computation per iteration instead of one around the loop.
    calls['compiled_pass_loop'] = (tf.function(loop_of(
        calls['model_pass_gradient'][0])), (x, subset))
  return calls


def wall_rows(times, inner):
  """[(row, median s, min s)] of the alternated pieces' seconds."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  t = dict(times)
  for name in ('attack_iteration', 'model_pass_gradient_loop',
               'compiled_pass_loop'):
    if name in t:
      t[name] = [s / inner for s in t[name]]
  stat = {name: (float(np.median(s)), float(np.min(s)))
          for name, s in t.items()}
  diff = lambda a, b: tuple(x - y for x, y in zip(stat[a], stat[b]))
  rows = [
      ('CNN forward', stat['cnn_forward']),
      ('CNN input-gradient pass', diff('cnn_input_gradient', 'cnn_forward')),
      ('capsule layers, forward', diff('model_pass', 'cnn_forward')),
      ('capsule layers, backward',
       tuple(a - b for a, b in zip(diff('model_pass_gradient', 'model_pass'),
                                   diff('cnn_input_gradient',
                                        'cnn_forward')))),
      ('the model pass in a tf.while_loop, over a single pass',
       diff('model_pass_gradient_loop', 'model_pass_gradient')),
      ('attack (tanh map, losses, record, step)',
       diff('attack_iteration', 'model_pass_gradient_loop')),
      ('**attack iteration**', stat['attack_iteration']),
      ('model pass with the input gradient', stat['model_pass_gradient']),
      ('the same, in a tf.while_loop', stat['model_pass_gradient_loop']),
      ('yardstick: CNN forward + filter gradients', stat['cnn_fwd_bwd']),
  ]
  if 'compiled_pass_loop' in stat:
    rows.append(('the pass compiled alone, in an uncompiled tf.while_loop',
                 stat['compiled_pass_loop']))
  return rows, stat['attack_iteration'][0] / stat['cnn_fwd_bwd'][0]


def op_rows(parts, outside, inner):
  """[(part, forward ms, backward ms)] per iteration, and the total."""
  rows = [(part, 1e3 * parts.get((part, 'forward'), 0.) / inner,
           1e3 * parts.get((part, 'backward'), 0.) / inner)
          for part in PARTS]
  rows.append(('outside the compiled loop (Python, dispatch)',
               1e3 * outside / inner, 0.))
  return rows, sum(f + b for _, f, b in rows)


def main(argv):
  del argv
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import classifiers  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf.capsules.model import SCAE  # pylint: disable=g-import-not-at-top
  from timing import alternating_times, cpu_model, markdown_table  # pylint: disable=g-import-not-at-top
  from timing import random_batch  # pylint: disable=g-import-not-at-top

  for mode in FLAGS.xla:
    if mode not in ('on', 'off'):
      raise app.UsageError(f'--xla takes on/off, got {mode!r}')
  config = configs.MNIST.without_noise()
  images, labels = random_batch(config, FLAGS.batch_size)
  model = SCAE(config)
  target = classifiers.make_classifier(model, 'PosL')
  print(f'CPU: {cpu_model()} ({os.cpu_count()} logical cores), TensorFlow '
        f'{tf.__version__}, load average at the start '
        f'{os.getloadavg()[0]:.2f}; batch {FLAGS.batch_size}, '
        f'{FLAGS.inner} iterations a call, {FLAGS.rounds} rounds.')
  result = dict(cpu=cpu_model(), tensorflow=tf.__version__,
                batch_size=FLAGS.batch_size, inner=FLAGS.inner,
                rounds=FLAGS.rounds, modes={})
  for mode in FLAGS.xla:
    jit = mode == 'on'
    calls = pieces(model, target, images, labels, FLAGS.inner, jit)
    times = alternating_times(calls, FLAGS.rounds)
    rows, over_cnn = wall_rows(times, FLAGS.inner)
    total = rows[6][1][0]
    print(f'\n### XLA {mode}: wall time per iteration (median of '
          f'{FLAGS.rounds} alternated rounds, and min)\n')
    print(markdown_table(
        ['part', 'median ms', 'min ms', 'share of the iteration'],
        [(name, f'{1e3 * med:.1f}', f'{1e3 * low:.1f}',
          f'{100 * med / total:.0f} %') for name, (med, low) in rows]))
    print(f'\nattack iteration / yardstick: {over_cnn:.2f}')
    out = dict(wall_ms={name: [round(1e3 * v, 2) for v in value]
                        for name, value in rows},
               attack_iteration_over_cnn_fwd_bwd=round(over_cnn, 3))
    if FLAGS.profile_calls:
      fn, args = calls['attack_iteration']
      parts, outside, top, wall = profile_calls(fn, args, jit,
                                                FLAGS.profile_calls)
      op_table, op_total = op_rows(parts, outside, FLAGS.inner)
      print(f'\n### XLA {mode}: op time per iteration (per op the median of '
            f'{FLAGS.profile_calls} profiled calls of {FLAGS.inner} '
            'iterations)\n')
      print(markdown_table(
          ['part', 'forward ms', 'backward ms', 'share of op time'],
          [(name, f'{f:.1f}', f'{b:.1f}', f'{100 * (f + b) / op_total:.1f} %')
           for name, f, b in op_table]))
      movement = 1e3 * parts['data movement'] / FLAGS.inner
      print(f'\nsum: {op_total:.1f} ms of op time per iteration (two threads '
            f'run ops at once), in {1e3 * wall / FLAGS.inner:.1f} ms of wall '
            'time (the profiled calls\' median); of the op time, ops that '
            f'only move data (transposes, concatenations, splits, slices, '
            f'broadcasts): {movement:.1f} ms ({100 * movement / op_total:.1f} '
            '%). Costliest ops (ms per iteration):')
      for op, seconds in top.items():
        print(f'  {1e3 * seconds / FLAGS.inner:7.1f}  {op}')
      out['op_ms'] = {name: [round(f, 2), round(b, 2)]
                      for name, f, b in op_table}
      out['profiled_wall_ms'] = round(1e3 * wall / FLAGS.inner, 2)
      out['data_movement_ms'] = round(movement, 2)
    result['modes'][mode] = out
    sys.stdout.flush()
  if FLAGS.json:
    with open(FLAGS.json, 'w') as f:
      json.dump(result, f, indent=1)


if __name__ == '__main__':
  define_flags()
  app.run(main)
