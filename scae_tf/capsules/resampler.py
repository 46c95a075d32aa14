"""Bilinear resampling for the SCAE template decoder: `resample`, the TF2
replacement of TF1's ``tf.contrib.resampler.resampler``.

Speed.  The decoder warps N = batch x templates (2400 for MNIST) 11 x 11
templates onto a 40 x 40 canvas: ~4M bilinear samples per step, forward and
backward.  Three implementations, one semantics, chosen by the `backend`
argument:

* 'native': the native kernel (scae_tf/kernels/resampler_op.cc, compiled on
  first use).  Its forward pass and warp gradient round exactly as the
  contrib kernel; the template gradient adds each point's four updates
  straight into a per-warp buffer.  A training step costs ~20 % less than
  with the path below, almost all of it in the backward pass (RESULTS.md
  section 2).
* 'tf': the pure-TF path (the fallback where no C++ compiler is found): the
  per-point work (weights, gathers, the gradient w.r.t. the sample points)
  runs in small XLA-compiled functions, each fusing into one loop.  The
  gradient w.r.t. the image is a scatter-add, which XLA:CPU executes as a
  serial loop (~15x slower than TF's kernel), so it is done with
  `tf.math.unsorted_segment_sum` between the compiled pieces.  Each sample
  point reads (and scatters to) ONE row of a table holding the 2x2
  neighbourhood of every cell of the zero-padded image, rather than four
  pixels.  XLA may fuse multiply-adds, so results can differ from the
  contrib kernel in the last bit.  Inside an enclosing `jit_compile=True`
  function everything is XLA and a dense matmul replaces the scatter
  (correct, but slower on CPU; see benchmarks/resampler_variants.py).
* 'auto' (the default): 'native' whenever the kernel is available, no GPU
  is visible and we are not inside XLA, else 'tf' (`auto_backend`).
"""
import tensorflow as tf

from scae_tf import kernels

try:  # Private, but the only way to know whether we are being traced for XLA.
  from tensorflow.python.ops import control_flow_util as _cfu
except ImportError:  # pragma: no cover
  _cfu = None

__all__ = ['resample', 'auto_backend', 'BACKENDS', 'in_xla_context']

BACKENDS = ('auto', 'native', 'tf')


def in_xla_context():
  """True while tracing for XLA (e.g. inside tf.function(jit_compile=True))."""
  if _cfu is None:
    return False
  return _cfu.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


# ---------------------------------------------------------------------------
# Bilinear resampler.
#
# XLA:CPU observations that shaped the code below (each measured, 2-5x
# effects): a gather is cheap only when it reads an array materialised by
# someone else (hence the tables are built by separate compiled functions and
# passed in); a gathered value must be consumed by a single fusion; and
# per-corner weights must not be assembled with tf.stack (a concatenate) but
# with tf.where on constant masks.
# ---------------------------------------------------------------------------

def _static_shape(data):
  shape = data.shape.as_list()
  if None in shape[1:]:
    raise ValueError(f'data needs static H, W, C; got shape {data.shape}')
  return shape


@tf.function(jit_compile=True, autograph=False)
def _value_table(data):
  """[N, H, W, C] -> [N * (H+1) * (W+1), 4, C]: 2x2 neighbourhoods.

  Row (n, r, c) holds the zero-padded image's pixels (r, c), (r, c+1),
  (r+1, c), (r+1, c+1): for a point with floor coordinates (fy, fx) =
  (r-1, c-1) its corners ff, fc, cf, cc.  The padding gives the kernel's
  "neighbours outside the image are 0" for free.
  """
  c = data.shape[-1]
  p = tf.pad(data, [[0, 0], [1, 1], [1, 1], [0, 0]])
  table = tf.stack([p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]],
                   axis=3)
  return tf.reshape(table, [-1, 4, c])


@tf.function(jit_compile=True, autograph=False)
def _slope_table(data):
  """[N, H, W, C] -> [N * (H+1) * (W+1), 2, 2, C]: the gradient kernel's slopes.

  Row (n, r, c), with (fy, fx) = (r-1, c-1) as above, holds
  [[D(fy,cx) - D(fy,fx), D(cy,cx) - D(cy,fx)],    (x slopes, rows fy, cy)
   [D(cy,fx) - D(fy,fx), D(cy,cx) - D(fy,cx)]]    (y slopes, cols fx, cx)
  so that d/dx, d/dy are each one linear interpolation of two entries.
  """
  c = data.shape[-1]
  p = tf.pad(data, [[0, 0], [1, 1], [1, 1], [0, 0]])
  sx = p[:, :, 1:] - p[:, :, :-1]  # [N, H+2, W+1, C]
  sy = p[:, 1:] - p[:, :-1]        # [N, H+1, W+2, C]
  table = tf.stack([sx[:, :-1], sx[:, 1:], sy[:, :, :-1], sy[:, :, 1:]], axis=3)
  return tf.reshape(table, [-1, 2, 2, c])


def _cells(x, y, h, w, n_data):
  """Per-point kernel quantities for sample points x, y [N, P].

  Warp row n samples image n % n_data (see `resample`).

  Returns the in-range mask, dx = (fx + 1) - x, dy = (fy + 1) - y, and the
  table row of every point: `row` (0 for out-of-range points, for gathers) and
  `scatter_row` (-1 for them, which unsorted_segment_sum and XLA scatters
  drop).
  """
  inside = (x > -1.) & (y > -1.) & (x < w) & (y < h)  # False for NaN too.
  fx, fy = tf.floor(x), tf.floor(y)
  dx, dy = (fx + 1.) - x, (fy + 1.) - y
  cell = tf.cast(tf.where(inside, (fy + 1.) * (w + 1) + (fx + 1.), 0.), tf.int32)
  image = tf.range(tf.shape(x)[0]) % n_data
  row = cell + (image * ((h + 1) * (w + 1)))[:, None]
  return inside, dx, dy, row, tf.where(inside, row, -1)


def _sample(values, x, y, h, w):
  """Forward kernel: value table, x, y [N, P] -> [N, P, C]."""
  n_data = tf.shape(values)[0] // ((h + 1) * (w + 1))
  inside, dx, dy, row, _ = _cells(x, y, h, w, n_data)
  v = tf.gather(values, row)
  dx, dy = dx[..., None], dy[..., None]
  # The contrib kernel's expression and summation order.
  out = (dx * dy * v[:, :, 0] + (1. - dx) * (1. - dy) * v[:, :, 3] +
         dx * (1. - dy) * v[:, :, 2] + (1. - dx) * dy * v[:, :, 1])
  return tf.where(inside[..., None], out, 0.)


def _sample_grads(slopes, x, y, grad, h, w):
  """Gradient kernel for upstream `grad` [N, P, C].

  Returns d/d(x, y) [N, P, 2] and the data-gradient scatter operands: patch
  gradients [N * P, 4, C] (corner order of the value table) and their rows
  [N * P] (-1 for out-of-range points).
  """
  c = grad.shape[-1]
  n_data = tf.shape(slopes)[0] // ((h + 1) * (w + 1))
  inside, dx, dy, _, scatter_row = _cells(x, y, h, w, n_data)
  dx, dy = dx[..., None], dy[..., None]
  # (1 - a) * slope(c) + a * slope(f), with a = dy for d/dx and dx for d/dy,
  # i.e. the kernel's one-sided derivatives (fx = floor(x) even at integers).
  v = tf.gather(slopes, tf.maximum(scatter_row, 0))
  a = tf.where([False, True], dx, dy)[..., None]
  gxy = tf.reduce_sum(((1. - a) * v[:, :, :, 1] + a * v[:, :, :, 0]) *
                      grad[:, :, None, :], -1)
  gxy = tf.where(inside[..., None], gxy, 0.)
  # Bilinear weights of the corners ff, fc, cf, cc.
  wx = tf.where([False, True, False, True], 1. - dx, dx)
  wy = tf.where([False, False, True, True], 1. - dy, dy)
  updates = (wx * wy)[..., None] * grad[:, :, None, :]
  return gxy, tf.reshape(updates, [-1, 4, c]), tf.reshape(scatter_row, [-1])


@tf.function(jit_compile=True, autograph=False)
def _fold(table, like):
  """Adjoint of `_value_table`: [N*(H+1)*(W+1), 4, C] -> [N, H, W, C]."""
  _, h, w, c = like.shape
  t = tf.reshape(table, [-1, h + 1, w + 1, 4, c])
  return (t[:, 1:, 1:, 0] + t[:, 1:, :-1, 1] + t[:, :-1, 1:, 2] +
          t[:, :-1, :-1, 3])


def _data_grad(updates, scatter_row, data):
  """Scatter-adds patch gradients into the value table, folds to [N,H,W,C]."""
  _, h, w, _ = _static_shape(data)
  rows = tf.shape(data)[0] * ((h + 1) * (w + 1))
  table = tf.math.unsorted_segment_sum(updates, scatter_row, rows)
  return _fold(table, data)


@tf.function(jit_compile=True, autograph=False)
def _resample_fwd(values, warp, h, w):
  return _sample(values, warp[..., 0], warp[..., 1], h, w)


@tf.function(jit_compile=True, autograph=False)
def _resample_bwd(slopes, warp, grad, h, w):
  return _sample_grads(slopes, warp[..., 0], warp[..., 1], grad, h, w)


def _data_grad_dense(warp, grad, h, w, n_data):
  """d data without a scatter, for use inside XLA: [N, H, W, C].

  With zero padding the bilinear weight of pixel (i, j) factorises into
  tent(y - i) * tent(x - j), tent(t) = max(0, 1 - |t|), bit for bit equal to
  the kernel's weights for every pixel inside the image (1 - (x - fx) and
  (fx + 1) - x round alike), so d data is one batched contraction over the
  points.  It does ~30x the necessary flops, yet beats XLA:CPU's scatter, which
  is a serial loop over the 4M points.
  """
  x, y = warp[..., 0], warp[..., 1]
  inside = ((x > -1.) & (y > -1.) & (x < w) & (y < h))[..., None]
  tent = lambda t, n: tf.nn.relu(1. - tf.abs(t[..., None] - tf.range(n, dtype=t.dtype)))
  tx = tf.where(inside, tent(x, w), 0.)  # [N, P, W]
  ty = tf.where(inside, tent(y, h), 0.)  # [N, P, H]
  per_warp = tf.einsum('npi,npj,npc->nijc', ty, tx, grad)
  # Warp row n sampled image n % n_data: sum the tiles.
  return tf.reduce_sum(tf.reshape(
      per_warp, tf.concat([[-1, n_data], tf.shape(per_warp)[1:]], 0)), 0)


@tf.custom_gradient
def _resample_points_tf(data, warp):
  _, h, w, _ = _static_shape(data)
  out = _resample_fwd(_value_table(data), warp, h, w)

  def grad(g):
    gwarp, updates, row = _resample_bwd(_slope_table(data), warp, g, h, w)
    if in_xla_context():
      return _data_grad_dense(warp, g, h, w, tf.shape(data)[0]), gwarp
    return _data_grad(updates, row, data), gwarp

  return out, grad


@tf.custom_gradient
def _resample_points_native(data, warp):
  ops = kernels.resampler_ops()

  def grad(g):
    return ops.scae_resample_grad(data, warp, g)

  return ops.scae_resample(data, warp), grad


def _gpu_visible():
  return bool(tf.config.list_logical_devices('GPU'))


def auto_backend():
  """The backend 'auto' stands for here: 'native' or 'tf'.

  'native' needs the kernel (`kernels.resampler_ops()`: none with
  SCAE_TF_NATIVE=0 or without a compiler).  It exists for the CPU only: with
  a GPU, placing it would copy every warp to the host and back, so the XLA
  path is used there; and XLA cannot compile it, so not inside XLA either.
  """
  if (not in_xla_context() and not _gpu_visible()
      and kernels.resampler_ops() is not None):
    return 'native'
  return 'tf'


def _points_fn(backend):
  """The [N, H, W, C], [M, P, 2] -> [M, P, C] function of `backend`."""
  if backend not in BACKENDS:
    raise ValueError(f'Unknown resampler backend {backend!r}; expected one '
                     f'of {list(BACKENDS)}.')
  if backend == 'auto':
    backend = auto_backend()
  elif backend == 'native':
    if kernels.resampler_ops() is None:
      raise ValueError(
          "backend='native', but the native resampler kernel is unavailable "
          f"({kernels.native_status()}); use 'auto' or 'tf'.")
    if in_xla_context():
      raise ValueError(
          "backend='native' cannot run inside an XLA-compiled function "
          "(jit_compile=True): XLA cannot compile the native op; use 'auto' "
          "or 'tf'.")
  return _resample_points_native if backend == 'native' else (
      _resample_points_tf)


def resample(data, warp, backend='auto'):
  """Bilinear sampling of `data` at `warp`, as tf.contrib.resampler (CPU).

  Args:
    data: [N, H, W, C] float32 images; H, W, C static. N may also divide the
      warp's batch: warp row n then samples image n % N, as if `data` were
      tiled along the batch (SCAE's templates are shared by all examples;
      not tiling them keeps the tables and the gradient scatter small).
    warp: [M, ..., 2] float32 sample points in pixel units, (x, y) = (column,
      row), M = N or a multiple of N.  Points with x <= -1, x >= W, y <= -1 or y >= H give 0; neighbours
      outside the image count as 0.
    backend: 'auto', 'native' or 'tf' (see the module docstring).  A
      ValueError for another name, and for 'native' where the kernel is
      unavailable or inside XLA.

  Returns:
    [N, ..., C].  Differentiable (once) w.r.t. both inputs with the gradients of
    the contrib kernel, including its one-sided derivative at integer
    coordinates (it follows fx = floor(x)).
  """
  points_fn = _points_fn(backend)
  data = tf.convert_to_tensor(data)
  warp = tf.convert_to_tensor(warp, dtype=data.dtype)
  _static_shape(data)
  n = tf.shape(warp)[0]
  flat = tf.reshape(warp, [n, -1, 2])
  out = points_fn(data, flat)
  out_shape = tf.concat([tf.shape(warp)[:-1], [data.shape[-1]]], 0)
  out = tf.reshape(out, out_shape)
  out.set_shape(warp.shape[:-1].concatenate(data.shape[-1:]))
  return out
