"""The SCAE template decoder's warp: Sonnet 1's affine grid warper and its
inverse, then bilinear sampling.

TF2 replacements for the TF1 pieces the original SCAE code relies on:

* ``snt.AffineGridWarper`` (Sonnet 1)       -> :func:`affine_grid`
* ``snt.AffineGridWarper(...).inverse()``   -> :func:`inverse_affine_grid`

and :func:`warp_templates`, the composition the template decoder calls
(the sampling is `scae_tf.capsules.resampler.resample`).
"""
import numpy as np
import tensorflow as tf

from scae_tf.capsules import resampler

__all__ = ['affine_grid', 'inverse_affine_grid', 'warp_templates']


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


def warp_templates(templates, pose, canvas_shape, backend='auto'):
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
    backend: the resampler's, 'auto', 'native' or 'tf' (see `resample`).

  Returns:
    [N, H, W, C]; differentiable w.r.t. templates and pose.
  """
  templates = tf.convert_to_tensor(templates)
  pose = tf.convert_to_tensor(pose, templates.dtype)
  grid = inverse_affine_grid(pose, source_shape=tuple(canvas_shape),
                             output_shape=tuple(templates.shape[1:3]))
  return resampler.resample(templates, grid, backend)
