"""Times template warping at the SCAE/MNIST size against the part CNN.

Workload: N = 2400 templates (batch 100 x 24), 11 x 11 x C=2, warped onto a
40 x 40 canvas; forward, and forward + backward w.r.t. templates and pose.
Reference: the part CNN (4 x Conv2D 128 3x3 VALID, strides 2,2,1,1, ReLU) on
[100, 40, 40, 1], forward + backward.

Prints one JSON object: per variant and jit_compile setting, the median wall
time and process CPU time (ms) of --repeats calls after warm-up.  On an idle
2-core machine CPU time approaches 2x wall for well-parallelised ops; when
other processes compete for the cores, wall time inflates and CPU time is the
steadier figure.  "load_avg_*" records how busy the machine was.

  python benchmarks/resampler_variants.py [--repeats 10] [--variants a,b]
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf

from scae_tf import kernels
from scae_tf.capsules import warping

N, TEMPLATE, CHANNELS, CANVAS = 2400, (11, 11), 2, (40, 40)


def scae_like_poses(rng, n, scale=(0.2, 0.8)):
  """Forward-warper params as SCAE's part capsules produce them."""
  ang = rng.uniform(-np.pi, np.pi, n)
  sx, sy = rng.uniform(*scale, n), rng.uniform(*scale, n)
  a, b = sx * np.cos(ang), -sy * np.sin(ang)
  c, d = sx * np.sin(ang), sy * np.cos(ang)
  tx, ty = rng.uniform(-0.7, 0.7, n), rng.uniform(-0.7, 0.7, n)
  return np.stack([a, b, tx, c, d, ty], -1).astype(np.float32)


# -- Variants: (templates [N, h, w, C], pose [N, 6]) -> [N, H, W, C]. --------

def naive_gather_nd(templates, pose):
  """The straightforward port: 4 gather_nd + autodiff (scatter-add grads)."""
  grid = warping.inverse_affine_grid(pose, CANVAS, TEMPLATE)
  _, h, w, _ = templates.shape
  x, y = grid[..., 0], grid[..., 1]
  fx, fy = tf.floor(x), tf.floor(y)
  dx, dy = fx + 1 - x, fy + 1 - y

  def pixel(r, c):
    ok = (r >= 0) & (r < h) & (c >= 0) & (c < w)
    idx = tf.cast(tf.stack([tf.clip_by_value(r, 0, h - 1),
                            tf.clip_by_value(c, 0, w - 1)], -1), tf.int32)
    return tf.gather_nd(templates, idx, batch_dims=1) * tf.cast(ok, tf.float32)[..., None]

  e = lambda t: t[..., None]
  out = (e(dx * dy) * pixel(fy, fx) + e((1 - dx) * (1 - dy)) * pixel(fy + 1, fx + 1) +
         e(dx * (1 - dy)) * pixel(fy + 1, fx) + e((1 - dx) * dy) * pixel(fy, fx + 1))
  inside = (x > -1) & (y > -1) & (x < w) & (y < h)
  return out * tf.cast(inside, tf.float32)[..., None]


def tent_einsum(templates, pose):
  """Dense form sum_ij tent(y - i) D[i, j] tent(x - j), autodiff gradients."""
  grid = warping.inverse_affine_grid(pose, CANVAS, TEMPLATE)
  _, h, w, _ = templates.shape
  n = tf.shape(grid)[0]
  x, y = tf.reshape(grid[..., 0], [n, -1]), tf.reshape(grid[..., 1], [n, -1])
  tent = lambda t, k: tf.nn.relu(1. - tf.abs(t[..., None] - tf.range(k, dtype=t.dtype)))
  out = tf.einsum('npi,nijc,npj->npc', tent(y, h), templates, tent(x, w))
  return tf.reshape(out, [n, CANVAS[0], CANVAS[1], templates.shape[-1]])


def warp_templates(templates, pose):
  """scae_tf.capsules.warping.warp_templates (what the decoder calls): the
  native kernel when it is available and outside XLA, else the pure-TF
  path."""
  return warping.warp_templates(templates, pose, CANVAS)


def warp_templates_pure_tf(templates, pose):
  """warp_templates forced onto the pure-TF path (the fallback)."""
  return warping.warp_templates(templates, pose, CANVAS, backend='tf')


VARIANTS = {
    'naive_gather_nd': naive_gather_nd,
    'tent_einsum': tent_einsum,
    'warp_templates': warp_templates,
    'warp_templates_pure_tf': warp_templates_pure_tf,
}


# -- Timing. ------------------------------------------------------------------

def measure(fn, repeats, warmup=2):
  for _ in range(warmup):
    fn()
  wall, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return {'wall_ms': round(1e3 * float(np.median(wall)), 1),
          'cpu_ms': round(1e3 * float(np.median(cpu)), 1)}


def cnn_step(jit):
  layers = [tf.keras.layers.Conv2D(128, 3, strides=s, padding='valid',
                                   activation='relu') for s in (2, 2, 1, 1)]
  images = tf.random.normal([100, 40, 40, 1], seed=0)

  def forward(x):
    for layer in layers:
      x = layer(x)
    return x

  forward(images)  # Builds the variables.
  variables = [v for layer in layers for v in layer.trainable_variables]

  @tf.function(jit_compile=jit)
  def step(x):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(forward(x))
    return tape.gradient(loss, variables)

  return lambda: [g.numpy() for g in step(images)]


def warp_steps(fn, templates, pose, upstream, jit):
  forward = tf.function(fn, jit_compile=jit)

  @tf.function(jit_compile=jit)
  def forward_backward(t, p):
    with tf.GradientTape() as tape:
      tape.watch([t, p])
      out = fn(t, p)
    return tape.gradient(out, [t, p], output_gradients=upstream)

  return (lambda: forward(templates, pose).numpy(),
          lambda: [g.numpy() for g in forward_backward(templates, pose)])


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--variants', default=','.join(VARIANTS))
  args = parser.parse_args()

  rng = np.random.RandomState(0)
  templates = tf.constant(rng.rand(N, *TEMPLATE, CHANNELS).astype(np.float32))
  upstream = tf.constant(rng.randn(N, *CANVAS, CHANNELS).astype(np.float32))
  poses = {'scae_like': scae_like_poses(rng, N),
           # Templates covering the whole canvas: every sample point in range.
           'all_inside': scae_like_poses(rng, N, scale=(1.3, 1.6)) * np.float32(
               [1, 1, 0, 1, 1, 0])}
  result = {'config': {'N': N, 'template': TEMPLATE, 'channels': CHANNELS,
                       'native_kernel': kernels.native_status(),
                       'canvas': CANVAS, 'threads': os.cpu_count(),
                       'load_avg_at_start': os.getloadavg()[0]}}
  for name, pose in poses.items():
    grid = warping.inverse_affine_grid(pose, CANVAS, TEMPLATE).numpy()
    x, y = grid[..., 0], grid[..., 1]
    inside = (x > -1) & (y > -1) & (x < TEMPLATE[1]) & (y < TEMPLATE[0])
    result['config'][f'in_range_fraction_{name}'] = round(float(inside.mean()), 3)

  for jit in (False, True):
    result[f'cnn_fwd_bwd_jit{int(jit)}'] = measure(cnn_step(jit), args.repeats)
  for variant in args.variants.split(','):
    for pose_name, pose in poses.items():
      if pose_name != 'scae_like' and not variant.startswith('warp_templates'):
        continue
      for jit in (False, True):
        fwd, fwd_bwd = warp_steps(VARIANTS[variant], templates, tf.constant(pose),
                                  upstream, jit)
        key = f'{variant}[{pose_name}]_jit{int(jit)}'
        result[key] = {'fwd': measure(fwd, args.repeats),
                       'fwd_bwd': measure(fwd_bwd, args.repeats)}
        print(key, result[key], file=sys.stderr, flush=True)
  result['config']['load_avg_at_end'] = os.getloadavg()[0]
  print(json.dumps(result, indent=1))


if __name__ == '__main__':
  main()
