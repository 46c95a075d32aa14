"""Helpers the benchmarks share: alternated timings, the attack's compiled
loop as the attacks prepare it, the CPU's name and Markdown tables.

Free of flags, so that every benchmark script can import it.
"""

import platform
import time


def capsule_outer_call(target, images, labels, steps, **overrides):
  """(compiled fn, args): one outer iteration of the paper_train capsule
  attack (`CapsuleAttack._outer`: `steps` inner iterations, then the test
  pass of the last step) against the classifier `target`, on the inputs the
  attack's own call prepares (its first p' draw included); `overrides` are
  further `AttackConfig` fields (e.g. jit_compile=True)."""
  # pylint: disable=protected-access
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from attacks import evasion  # pylint: disable=g-import-not-at-top

  x = tf.convert_to_tensor(images, tf.float32)
  y = tf.cast(labels, tf.int64)
  batch = int(x.shape[0])
  capsule = evasion.CapsuleAttack(target, 'paper_train', outer_iterations=1,
                                  inner_iterations=steps, **overrides)
  w, mask, subset, _ = capsule._prepare(x)
  const = tf.fill([batch], np.float32(capsule.config.const_init))
  inf = tf.fill([batch], np.float32(np.inf))
  # The first p' draw of the attack's own call.
  p = tf.random.Generator.from_seed(capsule.config.seed).uniform(x.shape)
  return capsule._outer, (x, w, mask, subset, y, const, inf,
                          tf.zeros_like(x), p)


def random_batch(config, batch_size, seed=0):
  """(images [B, H, W, C] uniform in [0, 1], labels [B] int64) of the
  config's shape, drawn after `tf.random.set_seed(seed)`: the benchmarks'
  inputs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.random.set_seed(seed)
  images = tf.random.uniform([batch_size, config.canvas_size,
                              config.canvas_size, config.n_channels])
  labels = tf.random.uniform([batch_size], 0, config.num_classes, tf.int64)
  return images, labels


def alternating_times(calls, rounds):
  """{name: [seconds of each timed round]} of calls {name: (fn, args)},
  called in turn `rounds` times after one warm-up each: a background load
  shifts all of them alike, so their ratios hold. Every other round runs in
  reverse order, so that no call always follows the same one (and inherits
  its leftovers: caches, memory to free). A call returns tensors (or
  anything with `.numpy()`), which are fetched inside its timing."""
  times = {name: [] for name in calls}
  names = list(calls)
  for i in range(rounds + 1):
    for name in names[::-1] if i % 2 else names:
      fn, args = calls[name]
      start = time.perf_counter()
      tf_numpy(fn(*args))
      times[name].append(time.perf_counter() - start)
  return {name: t[1:] for name, t in times.items()}


def alternating_medians(calls, rounds):
  """{name: median seconds} of `alternating_times(calls, rounds)`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return {name: float(np.median(t))
          for name, t in alternating_times(calls, rounds).items()}


def cpu_model():
  """The CPU's model name from /proc/cpuinfo (else what `platform` says)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def markdown_table(headers, rows):
  """A Markdown table of `rows` (sequences of cells) under `headers`."""
  lines = ['| ' + ' | '.join(headers) + ' |', '|' + '---|' * len(headers)]
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


def tf_numpy(outputs):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.nest.map_structure(lambda t: t.numpy(), outputs)
