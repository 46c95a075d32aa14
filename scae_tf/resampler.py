"""Bilinear resampling and affine grid warping for the SCAE template decoder.

TF2 replacements for the TF1 pieces the original SCAE code relies on:

* ``tf.contrib.resampler.resampler``       -> :func:`resample`
* ``snt.AffineGridWarper`` (Sonnet 1)       -> :func:`affine_grid`
* ``snt.AffineGridWarper(...).inverse()``   -> :func:`inverse_affine_grid`

and :func:`warp_templates`, the composition the template decoder calls.

Speed.  The decoder warps N = batch x templates (2400 for MNIST) 11 x 11
templates onto a 40 x 40 canvas: ~4M bilinear samples per step, forward and
backward.  Three implementations, one semantics:

* the native kernel (scae_tf/kernels/resampler_op.cc, compiled on first use):
  used whenever it is available, no GPU is visible and we are not inside
  XLA.  Its forward pass
  and warp gradient round exactly as the contrib kernel; the template
  gradient adds each point's four updates straight into a per-warp buffer.
  A training step costs ~20 % less than with the path below, almost all of
  it in the backward pass (RESULTS.md section 2).
* the pure-TF path (the fallback where no C++ compiler is found): the
  per-point work (weights, gathers, the gradient w.r.t. the sample points)
  runs in small XLA-compiled functions, each fusing into one loop.  The
  gradient w.r.t. the image is a scatter-add, which XLA:CPU executes as a
  serial loop (~15x slower than TF's kernel), so it is done with
  `tf.math.unsorted_segment_sum` between the compiled pieces.  Each sample
  point reads (and scatters to) ONE row of a table holding the 2x2
  neighbourhood of every cell of the zero-padded image, rather than four
  pixels.  XLA may fuse multiply-adds, so results can differ from the
  contrib kernel in the last bit.
* inside an enclosing `jit_compile=True` function everything is XLA and a
  dense matmul replaces the scatter (correct, but slower on CPU; see
  run/bench_resampler.py).
"""
import numpy as np
import tensorflow as tf

from scae_tf import kernels

try:  # Private, but the only way to know whether we are being traced for XLA.
  from tensorflow.python.ops import control_flow_util as _cfu
except ImportError:  # pragma: no cover
  _cfu = None

__all__ = ['resample', 'affine_grid', 'inverse_affine_grid', 'warp_templates']


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


def _resample_points(data, warp):
  """[N, H, W, C], [M, P, 2] -> [M, P, C] with the fastest correct kernel.

  The native kernel exists for the CPU only: with a GPU, placing it would
  copy every warp to the host and back, so the XLA path is used there.
  """
  if (not in_xla_context() and not _gpu_visible()
      and kernels.resampler_ops() is not None):
    return _resample_points_native(data, warp)
  return _resample_points_tf(data, warp)


def resample(data, warp):
  """Bilinear sampling of `data` at `warp`, as tf.contrib.resampler (CPU).

  Args:
    data: [N, H, W, C] float32 images; H, W, C static. N may also divide the
      warp's batch: warp row n then samples image n % N, as if `data` were
      tiled along the batch (SCAE's templates are shared by all examples;
      not tiling them keeps the tables and the gradient scatter small).
    warp: [M, ..., 2] float32 sample points in pixel units, (x, y) = (column,
      row), M = N or a multiple of N.  Points with x <= -1, x >= W, y <= -1 or y >= H give 0; neighbours
      outside the image count as 0.

  Returns:
    [N, ..., C].  Differentiable (once) w.r.t. both inputs with the gradients of
    the contrib kernel, including its one-sided derivative at integer
    coordinates (it follows fx = floor(x)).
  """
  data = tf.convert_to_tensor(data)
  warp = tf.convert_to_tensor(warp, dtype=data.dtype)
  _static_shape(data)
  n = tf.shape(warp)[0]
  flat = tf.reshape(warp, [n, -1, 2])
  out = _resample_points(data, flat)
  out_shape = tf.concat([tf.shape(warp)[:-1], [data.shape[-1]]], 0)
  out = tf.reshape(out, out_shape)
  out.set_shape(warp.shape[:-1].concatenate(data.shape[-1:]))
  return out


# ---------------------------------------------------------------------------
# Sonnet 1 AffineGridWarper and its inverse.
# ---------------------------------------------------------------------------

def _grid_features(source_shape, output_shape):
  """Sonnet 1's precomputed grid features, [2, 3, Ho * Wo] float32, and offsets.

  Row i (i = 0: x, 1: y) holds [xo * s_i, yo * s_i, s_i] over the output
  pixels, s_0 = (Ws - 1) / 2, s_1 = (Hs - 1) / 2; the offsets are (s_0, s_1).
  """
  ho, wo = output_shape
  # Sonnet 1 builds these in NumPy float32; tf.linspace differs in the last ulp.
  xo, yo = np.meshgrid(np.linspace(-1, 1, wo, dtype=np.float32),
                       np.linspace(-1, 1, ho, dtype=np.float32))
  scales = [np.float32((size - 1.) * .5) for size in source_shape[::-1]]
  features = np.stack([np.stack([xo.ravel() * s, yo.ravel() * s,
                                 np.full(xo.size, s)]) for s in scales])
  return features, scales


@tf.function(jit_compile=True, autograph=False)
def _affine_grid_flat(params, features, offsets):
  """[B, 6] -> [B, P, 2]: Sonnet 1's matmul-then-offset, per coordinate."""
  return tf.stack([tf.matmul(params[:, :3], features[0]) + offsets[0],
                   tf.matmul(params[:, 3:], features[1]) + offsets[1]], -1)


@tf.function(jit_compile=True, autograph=False)
def _affine_grid_flat_grad(grad, jacobian):
  """Adjoint of `_affine_grid_flat`: [B, P, 2] @ [P * 2, 6] -> [B, 6]."""
  return tf.matmul(tf.reshape(grad, [tf.shape(grad)[0], -1]), jacobian)


def _grid_jacobian(features):
  """d grid[b, p, i] / d params[b, k] as a [P * 2, 6] matrix."""
  p = features.shape[-1]
  jac = np.zeros((p, 2, 6), np.float32)
  jac[:, 0, :3] = features[0].T
  jac[:, 1, 3:] = features[1].T
  return jac.reshape(p * 2, 6)


def affine_grid(params, source_shape, output_shape):
  """Sonnet 1 `AffineGridWarper(source_shape, output_shape)(params)`.

  Args:
    params: [..., 6] = (a, b, tx, c, d, ty): the affine map from output
      normalised coordinates (in [-1, 1]) to source normalised coordinates.
    source_shape: (Hs, Ws) of the image that will be sampled.
    output_shape: (Ho, Wo) of the sampling grid.

  Returns:
    [..., Ho, Wo, 2] sample points (x, y) in source pixel units, computed as
    Sonnet 1 does: [a, b, tx] @ [xo * s, yo * s, s] + s, s = (Ws - 1) / 2.
    (Compiled with XLA: as plain TF ops this small op costs as much as the
    sampling itself at SCAE sizes.)
  """
  params = tf.convert_to_tensor(params)
  ho, wo = output_shape
  features, scales = _grid_features(source_shape, output_shape)
  jacobian = tf.constant(_grid_jacobian(features), params.dtype)
  features = tf.constant(features, params.dtype)
  offsets = tf.constant(scales, params.dtype)

  @tf.custom_gradient
  def grid_fn(flat):
    def grad(g):
      return _affine_grid_flat_grad(g, jacobian)
    return _affine_grid_flat(flat, features, offsets), grad

  grid = grid_fn(tf.reshape(params, [-1, 6]))
  grid = tf.reshape(grid, tf.concat([tf.shape(params)[:-1], [ho, wo, 2]], 0))
  grid.set_shape(params.shape[:-1].concatenate([ho, wo, 2]))
  return grid


def _invert_params(params):
  """(a, b, tx, c, d, ty) -> parameters of the inverse map, as Sonnet 1."""
  a, b, tx, c, d, ty = tf.unstack(params, axis=-1)
  det = a * d - b * c
  ai, bi, ci, di = d / det, -b / det, -c / det, a / det
  m = tf.reshape(tf.stack([ai, bi, ci, di], -1),
                 tf.concat([tf.shape(a), [2, 2]], 0))
  t = tf.matmul(m, tf.stack([tx, ty], -1)[..., None])[..., 0]
  return tf.stack([ai, bi, -t[..., 0], ci, di, -t[..., 1]], -1)


def inverse_affine_grid(params, source_shape, output_shape):
  """Grid of `AffineGridWarper(source_shape, output_shape).inverse()(params)`.

  Args:
    params: [..., 6] forward parameters (a, b, tx, c, d, ty).
    source_shape, output_shape: as given to the forward warper.

  Returns:
    [..., source_shape[0], source_shape[1], 2]: points in output_shape pixel
    units; i.e. where each pixel of the source-sized image comes from in an
    output-sized image (templates onto the canvas in SCAE).
  """
  return affine_grid(_invert_params(tf.convert_to_tensor(params)),
                     source_shape=output_shape, output_shape=source_shape)


def warp_templates(templates, pose, canvas_shape):
  """Renders templates onto a canvas with the SCAE template-decoder warp.

  Exactly `resample(templates, inverse_affine_grid(pose, canvas_shape, (h, w)))`
  (Sonnet 1 `AffineGridWarper(canvas_shape, (h, w)).inverse()` followed by the
  contrib resampler).  A version fusing grid and sampling into one XLA kernel
  with a gradient w.r.t. the 6 parameters was measured and was not faster.

  Args:
    templates: [N, h, w, C] float32; h, w, C static. As in `resample`, N may
      divide the pose batch M (pose row m uses template m % N).
    pose: [M, 6] float32 (a, b, tx, c, d, ty), forward-warper parameters.
    canvas_shape: (H, W).

  Returns:
    [N, H, W, C]; differentiable w.r.t. templates and pose.
  """
  templates = tf.convert_to_tensor(templates)
  pose = tf.convert_to_tensor(pose, templates.dtype)
  grid = inverse_affine_grid(pose, source_shape=tuple(canvas_shape),
                             output_shape=tuple(templates.shape[1:3]))
  return resample(templates, grid)
