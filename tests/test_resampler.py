"""Tests for scae_tf.capsules.resampler and scae_tf.capsules.warping against
independent NumPy re-derivations.

The references below follow the TF1 sources directly (contrib resampler CPU
kernel and its gradient kernel; Sonnet 1 AffineGridWarper and its inverse),
one sample point at a time, without sharing code with the module.
"""
import functools
import os

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import kernels
from scae_tf.capsules import resampler
from scae_tf.capsules import warping

RTOL, ATOL = 1e-5, 1e-6


def _require_native():
  if kernels.resampler_ops() is None:
    reason = f'native resampler kernel: {kernels.native_status()}'
    if os.environ.get('SCAE_REQUIRE_NATIVE') == '1':
      pytest.fail(reason + ' (SCAE_REQUIRE_NATIVE=1)')
    pytest.skip(reason)


@pytest.fixture(params=['native', 'tf'])
def backend(request):
  """Runs a test with the compiled kernel and with the pure-TF fallback."""
  if request.param == 'native':
    _require_native()
  return request.param


# Inside XLA only the pure-TF path runs: 'auto' must pick it there.
JIT_AND_BACKEND = pytest.mark.parametrize(
    'jit, backend', [(False, 'native'), (False, 'tf'), (True, 'auto')],
    indirect=['backend'])


# ---------------------------------------------------------------------------
# NumPy references.
# ---------------------------------------------------------------------------

def _pixel(data, n, row, col):
  h, w = data.shape[1:3]
  if 0 <= row < h and 0 <= col < w:
    return data[n, row, col]
  return np.zeros(data.shape[-1], data.dtype)


def np_resample(data, warp):
  """contrib resampler forward and backward (for upstream grad `g`) in a loop."""
  n_batch, h, w, c = data.shape
  pts = warp.reshape(n_batch, -1, 2)
  out = np.zeros(pts.shape[:2] + (c,), data.dtype)
  for n in range(n_batch):
    for p, (x, y) in enumerate(pts[n]):
      if x > -1 and y > -1 and x < w and y < h:
        fx, fy = int(np.floor(x)), int(np.floor(y))
        cx, cy = fx + 1, fy + 1
        dx, dy = data.dtype.type(cx - x), data.dtype.type(cy - y)
        one = data.dtype.type(1)
        out[n, p] = (dx * dy * _pixel(data, n, fy, fx) +
                     (one - dx) * (one - dy) * _pixel(data, n, cy, cx) +
                     dx * (one - dy) * _pixel(data, n, cy, fx) +
                     (one - dx) * dy * _pixel(data, n, fy, cx))
  return out.reshape(warp.shape[:-1] + (c,))


def np_resample_grad(data, warp, g):
  """Gradients (d data, d warp) of sum(resample(data, warp) * g)."""
  n_batch, h, w, c = data.shape
  pts = warp.reshape(n_batch, -1, 2)
  g = g.reshape(n_batch, -1, c)
  ddata = np.zeros_like(data)
  dwarp = np.zeros_like(pts)
  for n in range(n_batch):
    for p, (x, y) in enumerate(pts[n]):
      if not (x > -1 and y > -1 and x < w and y < h):
        continue
      fx, fy = int(np.floor(x)), int(np.floor(y))
      cx, cy = fx + 1, fy + 1
      dx, dy = cx - x, cy - y
      d = lambda r, col: _pixel(data, n, r, col)
      dwarp[n, p, 0] = np.sum(g[n, p] * ((1 - dy) * (d(cy, cx) - d(cy, fx)) +
                                         dy * (d(fy, cx) - d(fy, fx))))
      dwarp[n, p, 1] = np.sum(g[n, p] * ((1 - dx) * (d(cy, cx) - d(fy, cx)) +
                                         dx * (d(cy, fx) - d(fy, fx))))
      for r, col, wt in ((fy, fx, dx * dy), (cy, cx, (1 - dx) * (1 - dy)),
                         (cy, fx, dx * (1 - dy)), (fy, cx, (1 - dx) * dy)):
        if 0 <= r < h and 0 <= col < w:
          ddata[n, r, col] += wt * g[n, p]
  return ddata, dwarp.reshape(warp.shape)


def np_affine_grid(params, source_shape, output_shape):
  """Sonnet 1 AffineGridWarper, written out per output pixel."""
  hs, ws = source_shape
  ho, wo = output_shape
  xs = np.linspace(-1, 1, wo, dtype=np.float32)
  ys = np.linspace(-1, 1, ho, dtype=np.float32)
  sx, sy = (ws - 1) / 2, (hs - 1) / 2
  flat = params.reshape(-1, 6).astype(np.float64)
  grid = np.zeros((flat.shape[0], ho, wo, 2))
  for b, (a, bb, tx, c, d, ty) in enumerate(flat):
    for i in range(ho):
      for j in range(wo):
        grid[b, i, j, 0] = (a * xs[j] + bb * ys[i] + tx) * sx + sx
        grid[b, i, j, 1] = (c * xs[j] + d * ys[i] + ty) * sy + sy
  return grid.reshape(params.shape[:-1] + (ho, wo, 2))


def np_inverse_params(params):
  a, b, tx, c, d, ty = np.moveaxis(params.astype(np.float64), -1, 0)
  det = a * d - b * c
  m = np.stack([np.stack([d, -b], -1), np.stack([-c, a], -1)], -2) / det[
      ..., None, None]
  t = np.einsum('...ij,...j->...i', m, np.stack([tx, ty], -1))
  return np.stack([m[..., 0, 0], m[..., 0, 1], -t[..., 0],
                   m[..., 1, 0], m[..., 1, 1], -t[..., 1]], -1)


# ---------------------------------------------------------------------------
# Inputs.
# ---------------------------------------------------------------------------

def edge_case_warp(rng, n, p, h, w):
  """Random points mixed with every boundary case of the kernel."""
  eps = 1e-3
  ulp = lambda v, d: float(np.nextafter(np.float32(v), np.float32(d)))
  # Just below 0: the smallest normal float; TF (and XLA) flush denormals.
  tiny = float(np.finfo(np.float32).tiny)
  special = lambda s: [
      -1e6, -5., -1 - eps, -1., ulp(-1, 0), -1 + eps, -0.5, -tiny, 0.,
      eps, 1., 2.5, s - 2., s - 1 - eps, s - 1., s - 1 + eps, s - eps,
      ulp(s, 0), float(s), ulp(s, 2 * s), s + eps, s + 3., 1e6, np.inf,
      -np.inf, np.nan]
  xs, ys = special(w), special(h)
  x = rng.uniform(-2, w + 1, size=(n, p))
  y = rng.uniform(-2, h + 1, size=(n, p))
  # Special values on one coordinate, random or special on the other.
  k = len(xs)
  x[:, :k] = xs
  y[:, k:2 * k] = ys
  x[:, 2 * k:3 * k] = xs
  y[:, 2 * k:3 * k] = rng.permutation(ys)
  # Integer lattice points (incl. the image borders).
  m = p - 3 * k
  x[:, 3 * k:] = rng.randint(-1, w + 1, size=(n, m))
  y[:, 3 * k:] = rng.randint(-1, h + 1, size=(n, m))
  y[:, 3 * k + m // 2:] += rng.uniform(-2, 2, size=(n, m - m // 2)).round(1)
  return np.stack([x, y], -1).astype(np.float32)


def random_pose(rng, n):
  """Well-conditioned (a, b, tx, c, d, ty): rotation x anisotropic scale."""
  ang = rng.uniform(-np.pi, np.pi, n)
  sx, sy = rng.uniform(0.3, 1.2, n), rng.uniform(0.3, 1.2, n)
  shear = rng.uniform(-0.3, 0.3, n)
  a, b = sx * np.cos(ang), -sy * np.sin(ang) + shear
  c, d = sx * np.sin(ang), sy * np.cos(ang)
  tx, ty = rng.uniform(-0.8, 0.8, n), rng.uniform(-0.8, 0.8, n)
  return np.stack([a, b, tx, c, d, ty], -1).astype(np.float32)


def _grads(fn, args, g):
  args = [tf.constant(a) for a in args]
  with tf.GradientTape() as tape:
    tape.watch(args)
    out = fn(*args)
    loss = tf.reduce_sum(out * g)
  return out, tape.gradient(loss, args)


def _central_differences(f, x, eps=1e-6):
  """Element-wise central differences of the scalar f at x (float64)."""
  num = np.zeros_like(x)
  for idx in np.ndindex(*x.shape):
    e = np.zeros_like(x)
    e[idx] = eps
    num[idx] = (f(x + e) - f(x - e)) / (2 * eps)
  return num


def _directional_difference(f, x, v, eps=1e-6):
  """Central difference of the scalar f at x along direction v."""
  return (f(x + eps * v) - f(x - eps * v)) / (2 * eps)


# ---------------------------------------------------------------------------
# resample.
# ---------------------------------------------------------------------------

@pytest.mark.parametrize('channels', [1, 2, 3])
@JIT_AND_BACKEND
def test_resample_matches_kernel(channels, jit, backend):
  rng = np.random.RandomState(channels)
  n, h, w = 3, 5, 7
  data = rng.randn(n, h, w, channels).astype(np.float32)
  warp = edge_case_warp(rng, n, 160, h, w).reshape(n, 8, 20, 2)
  g = rng.randn(n, 8, 20, channels).astype(np.float32)

  fn = tf.function(functools.partial(resampler.resample, backend=backend),
                   jit_compile=jit)
  out, (ddata, dwarp) = _grads(fn, (data, warp), g)
  assert out.shape == (n, 8, 20, channels)
  np.testing.assert_allclose(out, np_resample(data, warp), RTOL, ATOL)
  ref_ddata, ref_dwarp = np_resample_grad(data, warp, g)
  np.testing.assert_allclose(ddata, ref_ddata, RTOL, ATOL)
  np.testing.assert_allclose(dwarp, ref_dwarp, RTOL, ATOL)
  # Exactly zero (not just small) outside the sampling box.
  x, y = warp[..., 0], warp[..., 1]
  outside = ~((x > -1) & (y > -1) & (x < w) & (y < h))
  assert np.all(out.numpy()[outside] == 0)
  assert np.all(dwarp.numpy()[outside] == 0)


@pytest.mark.parametrize('channels', [1, 2, 3])
def test_native_kernel_rounds_as_the_contrib_kernel(channels):
  """Forward and warp gradient bit for bit; the data gradient sums the
  same products in another order."""
  _require_native()
  rng = np.random.RandomState(10 + channels)
  n, h, w = 3, 6, 5
  data = rng.randn(n, h, w, channels).astype(np.float32)
  warp = edge_case_warp(rng, n, 300, h, w)
  g = rng.randn(n, 300, channels).astype(np.float32)
  ops = kernels.resampler_ops()
  np.testing.assert_array_equal(ops.scae_resample(data, warp),
                                np_resample(data, warp))
  ddata, dwarp = ops.scae_resample_grad(data, warp, g)
  ref_ddata, ref_dwarp = np_resample_grad(data, warp, g)
  np.testing.assert_array_equal(dwarp, ref_dwarp)
  np.testing.assert_allclose(ddata, ref_ddata, 1e-6, 1e-6)


def test_native_kernel_sums_shared_images_in_warp_order():
  """Warp rows sharing an image add their gradients in row order, so the
  result does not depend on how the rows were split across threads."""
  _require_native()
  rng = np.random.RandomState(11)
  data = rng.rand(2, 4, 4, 1).astype(np.float32)
  warp = rng.uniform(-1, 4, size=(2 * 50, 64, 2)).astype(np.float32)
  g = rng.randn(100, 64, 1).astype(np.float32)
  ddata, _ = kernels.resampler_ops().scae_resample_grad(data, warp, g)
  per_row = [np_resample_grad(data[m % 2:m % 2 + 1], warp[m:m + 1],
                              g[m:m + 1])[0][0] for m in range(100)]
  for n in range(2):
    expected = per_row[n].copy()
    for m in range(n + 2, 100, 2):
      expected += per_row[m]
    np.testing.assert_allclose(ddata[n], expected, rtol=1e-6, atol=1e-6)


def test_native_kernel_rejects_mismatched_batches():
  _require_native()
  ops = kernels.resampler_ops()
  with pytest.raises(tf.errors.InvalidArgumentError, match='multiple'):
    ops.scae_resample(tf.zeros([3, 4, 4, 1]), tf.zeros([4, 5, 2]))
  with pytest.raises(tf.errors.InvalidArgumentError, match='grad_output'):
    ops.scae_resample_grad(tf.zeros([2, 4, 4, 1]), tf.zeros([4, 5, 2]),
                           tf.zeros([4, 5, 2]))


def test_missing_compiler_falls_back_with_a_warning(monkeypatch, tmp_path):
  monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
  monkeypatch.setenv('SCAE_TF_KERNEL_CACHE', str(tmp_path / 'cache'))
  with pytest.raises(RuntimeError, match='no C.. compiler'):
    kernels.build()
  kernels.resampler_ops.cache_clear()
  try:
    with pytest.warns(RuntimeWarning, match='pure-TF path'):
      assert kernels.resampler_ops() is None
    assert kernels.native_status().startswith('unavailable: no C++ compiler')
    # The fallback still computes the kernel.
    data = np.random.RandomState(0).rand(1, 3, 3, 1).astype(np.float32)
    warp = np.array([[[0.5, 1.25], [2.5, -0.5]]], np.float32)
    np.testing.assert_allclose(resampler.resample(data, warp),
                               np_resample(data, warp), RTOL, ATOL)
    with pytest.raises(ValueError, match='native resampler kernel is '
                       'unavailable.*no C.. compiler'):
      resampler.resample(data, warp, backend='native')
  finally:
    kernels.resampler_ops.cache_clear()


def _contrib_exact(resample_fn):
  """Whether resample_fn rounds as the contrib kernel on 3000 points."""
  rng = np.random.RandomState(12)
  data = rng.rand(2, 11, 11, 2).astype(np.float32)
  warp = rng.uniform(-1.5, 11.5, size=(2, 1500, 2)).astype(np.float32)
  return np.array_equal(resample_fn(data, warp), np_resample(data, warp))


def test_auto_backend_is_the_native_kernel_on_cpu():
  _require_native()
  assert resampler.auto_backend() == 'native'
  assert _contrib_exact(resampler.resample)
  # The XLA-fused fallback rounds differently on these points, so the check
  # above does tell the two paths apart.
  assert not _contrib_exact(functools.partial(resampler.resample,
                                              backend='tf'))


def test_auto_backend_is_tf_with_a_gpu(monkeypatch):
  """A CPU-only op would drag every warp to the host and back."""
  _require_native()
  devices = tf.config.list_logical_devices
  monkeypatch.setattr(
      tf.config, 'list_logical_devices',
      lambda kind=None: ['/GPU:0'] if kind == 'GPU' else devices(kind))
  assert resampler.auto_backend() == 'tf'
  assert not _contrib_exact(resampler.resample)


def test_native_backend_is_refused_inside_xla():
  _require_native()
  chosen = []

  @tf.function(jit_compile=True)
  def native(d, w):
    chosen.append(resampler.auto_backend())
    return resampler.resample(d, w, backend='native')

  data = np.zeros((1, 3, 3, 1), np.float32)
  warp = np.zeros((1, 2, 2), np.float32)
  with pytest.raises(ValueError, match='inside an XLA-compiled function'):
    native(data, warp)
  assert chosen == ['tf']


def test_unknown_backend():
  with pytest.raises(ValueError, match="backend 'cuda'.*'auto', 'native', "
                     "'tf'"):
    resampler.resample(np.zeros((1, 3, 3, 1), np.float32),
                       np.zeros((1, 2, 2), np.float32), backend='cuda')


def test_build_is_cached(tmp_path):
  _require_native()
  first = kernels.build(tmp_path)
  mtime = first.stat().st_mtime_ns
  assert kernels.build(tmp_path) == first
  assert first.stat().st_mtime_ns == mtime
  assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_resample_integer_coordinates_use_floor_neighbour(backend):
  # At x = 1 exactly, the kernel differentiates towards column 2 (cx).
  data = np.zeros((1, 1, 4, 1), np.float32)
  data[0, 0, :, 0] = [0., 1., 5., 6.]
  warp = np.array([[[1., 0.], [-1., 0.], [3., 0.]]], np.float32)
  _, (_, dwarp) = _grads(functools.partial(resampler.resample,
                                           backend=backend), (data, warp),
                         np.ones((1, 3, 1), np.float32))
  np.testing.assert_allclose(dwarp[0, :, 0], [5. - 1., 0., 0. - 6.])


def test_resample_finite_differences_float64(backend):
  rng = np.random.RandomState(7)
  n, h, w, c = 2, 4, 6, 2
  data = rng.randn(n, h, w, c)
  # Away from integers so that the kernel is smooth around each point;
  # includes points whose neighbours are partly outside the image.
  base = rng.randint(-1, max(h, w), size=(n, 30, 2)).astype(np.float64)
  base[..., 0] = np.clip(base[..., 0], -1, w - 1)
  base[..., 1] = np.clip(base[..., 1], -1, h - 1)
  warp = base + rng.uniform(0.1, 0.9, size=base.shape)
  g = rng.randn(n, 30, c)

  def loss(d, wp):
    return tf.reduce_sum(resampler.resample(d, wp, backend) * g)

  _, (ddata, dwarp) = _grads(lambda d, wp: resampler.resample(d, wp, backend),
                             (data, warp), g)
  eps = 1e-6
  num_dwarp = _central_differences(lambda w: loss(data, w), warp, eps)
  np.testing.assert_allclose(dwarp, num_dwarp, rtol=1e-6, atol=1e-8)
  # The output is linear in the data: one probe direction is enough.
  v = rng.randn(*data.shape)
  num = _directional_difference(lambda d: loss(d, warp), data, v, eps)
  np.testing.assert_allclose(np.sum(ddata * v), num, rtol=1e-6)


# ---------------------------------------------------------------------------
# Affine grid warper.
# ---------------------------------------------------------------------------

def test_affine_grid_matches_sonnet1():
  rng = np.random.RandomState(0)
  params = rng.randn(2, 3, 6).astype(np.float32)
  grid = warping.affine_grid(params, source_shape=(9, 13),
                             output_shape=(5, 4))
  assert grid.shape == (2, 3, 5, 4, 2)
  np.testing.assert_allclose(
      grid, np_affine_grid(params, (9, 13), (5, 4)), RTOL, 1e-5)


def test_affine_grid_gradient():
  rng = np.random.RandomState(4)
  src, out = (9, 14), (5, 7)  # Non-square: x and y scales differ.
  params = rng.randn(3, 6).astype(np.float32)
  g = rng.randn(3, 5, 7, 2).astype(np.float32)
  _, (dparams,) = _grads(
      lambda p: warping.affine_grid(p, src, out), (params,), g)
  xs = np.linspace(-1, 1, out[1])[None, None, :]
  ys = np.linspace(-1, 1, out[0])[None, :, None]
  sx, sy = (src[1] - 1) / 2, (src[0] - 1) / 2
  gx, gy = g[..., 0].astype(np.float64), g[..., 1].astype(np.float64)
  ref = np.stack([(gx * xs).sum((1, 2)) * sx, (gx * ys).sum((1, 2)) * sx,
                  gx.sum((1, 2)) * sx, (gy * xs).sum((1, 2)) * sy,
                  (gy * ys).sum((1, 2)) * sy, gy.sum((1, 2)) * sy], -1)
  np.testing.assert_allclose(dparams, ref, 1e-5, 1e-4)


def test_inverse_affine_grid_matches_sonnet1():
  rng = np.random.RandomState(1)
  params = random_pose(rng, 6)
  grid = warping.inverse_affine_grid(params, source_shape=(40, 40),
                                     output_shape=(11, 11))
  assert grid.shape == (6, 40, 40, 2)
  ref = np_affine_grid(np_inverse_params(params), (11, 11), (40, 40))
  np.testing.assert_allclose(grid, ref, 1e-4, 1e-4)


def test_inverse_affine_grid_round_trip():
  rng = np.random.RandomState(2)
  src, out = (17, 23), (11, 9)
  params = random_pose(rng, 5)
  fwd = warping.affine_grid(params, src, out).numpy()      # [5, 11, 9, 2]
  inv = warping.inverse_affine_grid(params, src, out).numpy()  # [5, 17, 23, 2]
  # inv is affine in the source pixel (col, row); evaluate it at fwd's points.
  ex, ey = inv[:, 0, 1] - inv[:, 0, 0], inv[:, 1, 0] - inv[:, 0, 0]
  back = (inv[:, None, None, 0, 0] + fwd[..., :1] * ex[:, None, None] +
          fwd[..., 1:] * ey[:, None, None])
  cols, rows = np.meshgrid(np.arange(out[1]), np.arange(out[0]))
  np.testing.assert_allclose(back[..., 0], np.broadcast_to(cols, back.shape[:-1]),
                             atol=2e-4)
  np.testing.assert_allclose(back[..., 1], np.broadcast_to(rows, back.shape[:-1]),
                             atol=2e-4)


# ---------------------------------------------------------------------------
# warp_templates.
# ---------------------------------------------------------------------------

@JIT_AND_BACKEND
def test_warp_templates_equals_resample_of_inverse_grid(jit, backend):
  rng = np.random.RandomState(3)
  n, h, w, c, canvas = 6, 11, 11, 2, (40, 40)
  templates = rng.rand(n, h, w, c).astype(np.float32)
  pose = random_pose(rng, n)
  g = rng.randn(n, 40, 40, c).astype(np.float32)

  def composed(t, p):
    grid = warping.inverse_affine_grid(p, source_shape=canvas,
                                       output_shape=(h, w))
    return resampler.resample(t, grid, backend)

  fast = tf.function(lambda t, p: warping.warp_templates(t, p, canvas,
                                                         backend),
                     jit_compile=jit)
  out, (dt, dp) = _grads(fast, (templates, pose), g)
  ref, (ref_dt, ref_dp) = _grads(composed, (templates, pose), g)
  assert out.shape == (n, 40, 40, c)
  np.testing.assert_allclose(out, ref, RTOL, ATOL)
  np.testing.assert_allclose(dt, ref_dt, RTOL, 1e-5)
  np.testing.assert_allclose(dp, ref_dp, 1e-4, 1e-3)
  # And against the NumPy kernel on the NumPy grid.
  np_grid = np_affine_grid(np_inverse_params(pose), (h, w), canvas)
  np.testing.assert_allclose(out, np_resample(templates, np_grid.astype(np.float32)),
                             1e-4, 1e-4)


def test_warp_templates_pose_gradient_finite_differences_float64(backend):
  rng = np.random.RandomState(5)
  n, h, w, c, canvas = 2, 5, 6, 2, (9, 7)  # Non-square everywhere.
  templates = rng.rand(n, h, w, c)
  pose = random_pose(rng, n).astype(np.float64)
  g = rng.randn(n, *canvas, c)

  def loss(t, p):
    return float(tf.reduce_sum(
        warping.warp_templates(t, p, canvas, backend) * g))

  _, (dt, dp) = _grads(lambda t, p: warping.warp_templates(t, p, canvas,
                                                           backend),
                       (templates, pose), g)
  eps = 1e-6
  num = _central_differences(lambda p: loss(templates, p), pose, eps)
  np.testing.assert_allclose(dp, num, rtol=1e-5, atol=1e-7)
  v = rng.randn(*templates.shape)
  num_t = _directional_difference(lambda t: loss(t, pose), templates, v, eps)
  np.testing.assert_allclose(np.sum(dt * v), num_t, rtol=1e-6)


@JIT_AND_BACKEND
def test_shared_data_equals_tiled_data(jit, backend):
  """data [N] with warp [M * N]: row m samples image m % N, as tiling would."""
  rng = np.random.RandomState(3)
  data = tf.constant(rng.rand(3, 5, 4, 2).astype(np.float32))
  warp = tf.constant(rng.uniform(-2, 6, size=(6, 7, 2)).astype(np.float32))
  weights = tf.constant(rng.rand(6, 7, 2).astype(np.float32))

  def loss_and_grads(d, tile):
    with tf.GradientTape() as tape:
      tape.watch([d, warp])
      dd = tf.tile(d, [2, 1, 1, 1]) if tile else d
      out = resampler.resample(dd, warp, backend)
      loss = tf.reduce_sum(out * weights)
    return (out,) + tuple(tape.gradient(loss, [d, warp]))

  fn = tf.function(loss_and_grads, jit_compile=True) if jit else loss_and_grads
  shared, tiled = fn(data, False), fn(data, True)
  for a, b in zip(shared, tiled):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
