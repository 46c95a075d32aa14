"""Bilinear resampling and affine grid warping for the SCAE template decoder.

TF2 replacements for three TF1 pieces the original SCAE code relies on:

* ``tf.contrib.resampler.resampler``  -> :func:`resample`
* ``snt.AffineGridWarper`` (Sonnet 1)  -> :func:`affine_grid`
* ``snt.AffineGridWarper(...).inverse()`` -> :func:`inverse_affine_grid`

plus :func:`warp_templates`, the composition the template decoder calls.

Speed.  The decoder warps N = batch x templates (2400 for MNIST) small templates
onto a 40 x 40 canvas, i.e. ~4M bilinear samples per step, forward and backward.
Plain TF ops are far too slow for that (every elementwise op materialises a
[N, P] tensor), so the per-point work (weights, gather, gradient w.r.t. the
warp) runs in small XLA-compiled functions, where it fuses into one loop.  The
gradient w.r.t. the data is a scatter-add; XLA:CPU lowers scatters to a slow
serial while-loop, so outside XLA it is done by the TF kernel
``unsorted_segment_sum`` instead (about 15x faster).  Under an enclosing
``jit_compile=True`` everything is necessarily XLA; that path is correct but
slower (see run/bench_resampler.py).

To make the scatter/gather cheap, each point touches ONE row of a "patch table"
holding the 2x2 neighbourhood of every pixel of the zero-padded image, instead
of four separate pixels.
"""
import tensorflow as tf

try:  # Private, but the only way to know whether we are being traced for XLA.
  from tensorflow.python.ops import control_flow_util as _cfu
except ImportError:  # pragma: no cover
  _cfu = None

__all__ = ['resample', 'affine_grid', 'inverse_affine_grid', 'warp_templates']


def _in_xla_context():
  if _cfu is None:
    return False
  return _cfu.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())


# ---------------------------------------------------------------------------
# Bilinear resampler.
# ---------------------------------------------------------------------------

def _patch_table(data):
  """[N, H, W, C] -> [N * (H+1) * (W+1), 4, C] table of 2x2 neighbourhoods.

  Row (n, r, c) holds the padded image's pixels (r, c), (r, c+1), (r+1, c),
  (r+1, c+1), i.e. for a point with floor coordinates (fy, fx) = (r-1, c-1) the
  corners ff, fc, cf, cc (row first).  Zero padding makes neighbours outside
  the image contribute 0, as in the contrib kernel.
  """
  n, h, w, c = _static_shape(data)
  p = tf.pad(data, [[0, 0], [1, 1], [1, 1], [0, 0]])
  table = tf.stack([p[:, :-1, :-1], p[:, :-1, 1:], p[:, 1:, :-1], p[:, 1:, 1:]],
                   axis=3)
  return tf.reshape(table, [-1, 4, c])


def _fold_patch_table(table, h, w):
  """Adjoint of `_patch_table`: [N*(H+1)*(W+1), 4, C] -> [N, H, W, C]."""
  c = table.shape[-1]
  t = tf.reshape(table, [-1, h + 1, w + 1, 4, c])
  return (t[:, 1:, 1:, 0] + t[:, 1:, :-1, 1] + t[:, :-1, 1:, 2] +
          t[:, :-1, :-1, 3])


def _static_shape(data):
  shape = data.shape.as_list()
  if None in shape[1:]:
    raise ValueError(f'data needs static H, W, C; got shape {data.shape}')
  return shape


def _points(warp, n, h, w):
  """Per-point quantities of the kernel for warp [N, P, 2].

  Returns the patch-table row of every point, the four bilinear weights in
  table order (ff, fc, cf, cc), [N, P, 4], dx, dy and the in-range mask.
  Weights of out-of-range points are 0 and their row index 0, so nothing
  downstream needs to look at the mask again (except the warp gradient).
  """
  x, y = warp[..., 0], warp[..., 1]
  inside = (x > -1.) & (y > -1.) & (x < w) & (y < h)  # False for NaN too.
  fx, fy = tf.floor(x), tf.floor(y)
  dx, dy = (fx + 1.) - x, (fy + 1.) - y
  row = tf.where(inside, (fy + 1.) * (w + 1) + (fx + 1.), 0.)
  row = tf.cast(row, tf.int32) + (tf.range(n) * ((h + 1) * (w + 1)))[:, None]
  zero = tf.zeros_like(dx)
  weights = tf.where(inside[..., None],
                     tf.stack([dx * dy, (1. - dx) * dy, dx * (1. - dy),
                               (1. - dx) * (1. - dy)], -1),
                     zero[..., None])
  return row, weights, dx, dy, inside


@tf.function(jit_compile=True, autograph=False)
def _forward(data, warp):
  n, h, w, _ = _static_shape(data)
  n = tf.shape(data)[0]
  row, wt, _, _, _ = _points(warp, n, h, w)
  v = tf.gather(_patch_table(data), row)  # [N, P, 4, C]
  wt = wt[..., None]
  # Same summation order as the contrib kernel: ff, cc, cf, fc.
  return (wt[:, :, 0] * v[:, :, 0] + wt[:, :, 3] * v[:, :, 3] +
          wt[:, :, 2] * v[:, :, 2] + wt[:, :, 1] * v[:, :, 1])


@tf.function(jit_compile=True, autograph=False)
def _backward_points(data, warp, grad):
  """Warp gradient [N, P, 2], plus the data-gradient scatter operands."""
  n, h, w, c = _static_shape(data)
  n = tf.shape(data)[0]
  row, wt, dx, dy, inside = _points(warp, n, h, w)
  v = tf.gather(_patch_table(data), row)
  ff, fc, cf, cc = v[:, :, 0], v[:, :, 1], v[:, :, 2], v[:, :, 3]
  dx, dy = dx[..., None], dy[..., None]
  # One-sided (right) derivatives, consistent with fx = floor(x).
  gx = tf.reduce_sum(grad * ((1. - dy) * (cc - cf) + dy * (fc - ff)), -1)
  gy = tf.reduce_sum(grad * ((1. - dx) * (cc - fc) + dx * (cf - ff)), -1)
  gwarp = tf.where(inside[..., None], tf.stack([gx, gy], -1), 0.)
  updates = wt[..., None] * grad[:, :, None, :]  # [N, P, 4, C]
  return gwarp, tf.reshape(updates, [-1, 4, c]), tf.reshape(row, [-1])


@tf.function(jit_compile=True, autograph=False)
def _fold(table, like):
  return _fold_patch_table(table, like.shape[1], like.shape[2])


def _data_grad(table_grad, row, data):
  """Scatter-add [M, 4, C] patch gradients at `row` and fold them to [N,H,W,C]."""
  _, h, w, _ = _static_shape(data)
  rows = tf.shape(data)[0] * ((h + 1) * (w + 1))
  table = tf.math.unsorted_segment_sum(table_grad, row, rows)
  return _fold(table, data)


@tf.custom_gradient
def _resample_points(data, warp):
  out = _forward(data, warp)

  def grad(g):
    gwarp, updates, row = _backward_points(data, warp, g)
    return _data_grad(updates, row, data), gwarp

  return out, grad


def resample(data, warp):
  """Bilinear sampling of `data` at `warp`, as tf.contrib.resampler (CPU).

  Args:
    data: [N, H, W, C] float32 images; H, W, C static.
    warp: [N, ..., 2] float32 sample points in pixel units, (x, y) = (column,
      row).  Points with x <= -1, x >= W, y <= -1 or y >= H give 0; neighbours
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
  """
  params = tf.convert_to_tensor(params)
  dtype = params.dtype
  ho, wo = output_shape
  xo, yo = tf.meshgrid(tf.linspace(-1., 1., wo), tf.linspace(-1., 1., ho))
  xo, yo = tf.reshape(tf.cast(xo, dtype), [-1]), tf.reshape(tf.cast(yo, dtype), [-1])
  lead = tf.shape(params)[:-1]
  flat = tf.reshape(params, [-1, 6])
  coords = []
  for i, size in enumerate((source_shape[1], source_shape[0])):
    s = (size - 1.) * .5
    features = tf.stack([xo * s, yo * s, tf.fill(tf.shape(xo), tf.cast(s, dtype))])
    coords.append(tf.matmul(flat[:, 3 * i:3 * i + 3], features) + s)
  grid = tf.reshape(tf.stack(coords, -1), tf.concat([lead, [ho, wo, 2]], 0))
  grid.set_shape(params.shape[:-1].concatenate([ho, wo, 2]))
  return grid


def _invert_params(params):
  """(a, b, tx, c, d, ty) -> parameters of the inverse map, as Sonnet 1."""
  a, b, tx, c, d, ty = tf.unstack(params, axis=-1)
  det = a * d - b * c
  ai, bi, ci, di = d / det, -b / det, -c / det, a / det
  txi = ai * tx + bi * ty  # Sonnet 1: [[ai, bi], [ci, di]] @ [tx, ty].
  tyi = ci * tx + di * ty
  return tf.stack([ai, bi, -txi, ci, di, -tyi], -1)


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

  Equals `resample(templates, inverse_affine_grid(pose, canvas_shape, (h, w)))`,
  i.e. Sonnet 1 `AffineGridWarper(canvas_shape, (h, w)).inverse()` followed by
  the contrib resampler.

  Args:
    templates: [N, h, w, C] float32.
    pose: [N, 6] float32 (a, b, tx, c, d, ty).
    canvas_shape: (H, W).

  Returns:
    [N, H, W, C]; differentiable w.r.t. templates and pose.
  """
  templates = tf.convert_to_tensor(templates)
  grid = inverse_affine_grid(pose, source_shape=canvas_shape,
                             output_shape=templates.shape[1:3])
  return resample(templates, grid)
