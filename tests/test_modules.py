"""Unit tests of each SCAE module on tiny configs, with answers by hand."""

import math

import numpy as np
import pytest
import tensorflow as tf

from scae_tf import configs
from scae_tf.capsules import losses
from scae_tf.capsules import math_ops
from scae_tf.capsules import set_transformer
from scae_tf.capsules.likelihoods import (CapsuleLikelihood, ImageMixture,
                                          DUMMY_LOGIT)
from scae_tf.capsules.model import SCAE
from scae_tf.capsules.neural import BatchLinear, BatchMLP, LayerNorm
from scae_tf.capsules.objects import ObjectCapsules
from scae_tf.optim import TF1RMSProp, exponential_decay
from scae_tf.capsules.parts import PartEncoder, TemplateDecoder
from scae_tf.capsules.set_transformer import SetTransformer, qkv_attention

TINY = configs.tiny_config()


def test_geometric_transform_identity_and_matrix():
  # sigmoid(x) + .01 = 1 -> x = logit(.99); zero rotation, shear, translation.
  s = math.log(.99 / .01)
  pose = math_ops.geometric_transform(tf.constant([[s, s, 0., 0., 0., 0.]]))
  np.testing.assert_allclose(pose, [[1, 0, 0, 0, 1, 0]], atol=1e-6)
  quarter = math_ops.geometric_transform(
      tf.constant([[s, s, .25, 0., 0., 0.]]), as_matrix=True)
  np.testing.assert_allclose(quarter[0], [[0, -1, 0], [1, 0, 0], [0, 0, 1]],
                             atol=1e-6)


def test_safe_log():
  np.testing.assert_allclose(math_ops.safe_log(tf.constant([0., 1e-20, 1.])),
                             [-1e8, -1e8, 0.])


def test_batch_linear_is_per_capsule_matmul():
  layer = BatchLinear(3, 4, 2)
  layer.b.assign(tf.random.normal([3, 2]))
  x = tf.random.normal([5, 3, 4])
  want = np.einsum('bkd,kdn->bkn', x, layer.weights[0]) + layer.b.numpy()
  np.testing.assert_allclose(layer(x), want, rtol=1e-5, atol=1e-6)
  mlp = BatchMLP(3, 4, [6, 2], use_bias=False)
  assert mlp.layers[0].b is not None and mlp.layers[1].b is None


def test_layer_norm_normalises_last_axis():
  y = LayerNorm(8)(tf.random.normal([4, 3, 8]) * 5 + 2)
  np.testing.assert_allclose(tf.reduce_mean(y, -1), 0., atol=1e-5)
  np.testing.assert_allclose(tf.math.reduce_std(y, -1), 1., atol=1e-3)


def test_qkv_attention_float_mask_is_hard_on_most_present_key():
  q = tf.random.normal([1, 2, 4])
  k = tf.random.normal([1, 3, 4])
  v = tf.constant([[[1., 0.], [0., 1.], [5., 5.]]])
  out = qkv_attention(q, k, v, presence=tf.constant([[.3, .9, .5]]))
  # (1 - p) * 1e32 dwarfs the logits: all weight goes to the key with p=.9.
  np.testing.assert_allclose(out, [[[0., 1.], [0., 1.]]], atol=1e-6)
  unmasked = qkv_attention(q, k, v)
  logits = tf.matmul(q, k, transpose_b=True) / 2.
  np.testing.assert_allclose(unmasked, tf.nn.softmax(logits) @ v, rtol=1e-5)


def test_set_transformer_shapes_and_permutation_invariance():
  st = SetTransformer(5, n_layers=2, n_heads=2, n_dims=8, n_output_dims=6,
                      n_outputs=3)
  x = tf.random.normal([2, 4, 5])
  out = st(x)
  assert out.shape == [2, 3, 6]
  np.testing.assert_allclose(st(tf.reverse(x, [1])), out, rtol=1e-4,
                             atol=1e-5)


def test_part_encoder_shapes_ranges_and_noise():
  enc = PartEncoder(TINY)
  images = tf.random.uniform([3, 20, 20, 1])
  part = enc(images)
  assert part.pose.shape == [3, 4, 6] and part.feature.shape == [3, 4, 3]
  np.testing.assert_allclose(part.presence, tf.sigmoid(part.presence_logit))
  np.testing.assert_allclose(enc(images).presence_logit, part.presence_logit)
  noisy = enc(images, noise=True).presence_logit - part.presence_logit
  assert 0 < np.abs(noisy).max() <= TINY.part_encoder_noise_scale / 2


def test_template_decoder_identity_pose_renders_template_centred():
  config = TINY.replace(template_size=5, canvas_size=5, colorize_templates=False)
  dec = TemplateDecoder(config)
  s = math.log(.99 / .01)
  pose = math_ops.geometric_transform(
      tf.constant([[[s, s, 0., 0., 0., 0.]] * 4]))
  rec = dec(pose, tf.ones([1, 4]))
  # Identity warp between equal grids reproduces each template exactly.
  np.testing.assert_allclose(rec.transformed_templates[0],
                             dec.make_templates()[0], atol=1e-5)
  assert rec.pdf.mixing_logits.shape == [1, 5, 5, 5, 1]


def test_image_mixture_matches_hand_computation():
  comps = tf.constant([[[0.2], [0.9]]])[..., None, None]       # [1,2,1,1,1]
  logits = tf.constant([[[0.], [math.log(3.)]]])[..., None, None]
  pdf = ImageMixture(logits, comps)
  x = tf.constant([[[[0.5]]]])
  normal = lambda m: math.exp(-.5 * (0.5 - m) ** 2) / math.sqrt(2 * math.pi)
  want = math.log(.25 * normal(.2) + .75 * normal(.9))
  np.testing.assert_allclose(pdf.log_prob(x), [[[[want]]]], rtol=1e-6)
  np.testing.assert_allclose(pdf.mean(), [[[[.25 * .2 + .75 * .9]]]],
                             rtol=1e-6)
  np.testing.assert_allclose(pdf.mode(), [[[[.9]]]])


def test_capsule_likelihood_matches_hand_computation():
  lik = CapsuleLikelihood(n_votes=1)
  votes = tf.constant([[[[0.] * 6]], [[[1.] * 6]]])           # [2 caps]
  votes = tf.reshape(votes, [1, 2, 1, 6])
  scales = tf.constant([[[1.], [2.]]])
  pres = tf.constant([[[.5], [.25]]])
  x = tf.zeros([1, 1, 6])
  res = lik(votes, scales, pres, x, presence=tf.constant([[1.]]))
  log_n = lambda v, s: 6 * (-.5 * (v / s) ** 2 - math.log(s)
                            - .5 * math.log(2 * math.pi))
  terms = [math.log(.5) + log_n(0, 1), math.log(.25) + log_n(1, 2),
           2 * DUMMY_LOGIT]
  want = math.log(sum(math.exp(t) for t in terms))
  np.testing.assert_allclose(res.log_prob, want, rtol=1e-5)
  post = np.exp(np.array(terms) - want)
  np.testing.assert_allclose(res.posterior_mixing_probs[0, 0], post[:2],
                             rtol=1e-5)
  assert int(res.is_from_capsule[0, 0]) == 0
  np.testing.assert_allclose(res.winner, votes[:, 0])


def test_object_capsules_votes_and_presences():
  obj = ObjectCapsules(TINY, input_size=12)
  out = obj(tf.random.normal([2, 3, 12]), tf.random.normal([2, 4, 6]),
            tf.ones([2, 4]))
  assert out.vote.shape == [2, 3, 4, 6]
  np.testing.assert_allclose(out.caps_presence_prob,
                             tf.reduce_max(out.vote_presence_prob, 2))
  assert np.all(out.scale.numpy() > 1e-2)
  assert out.likelihood.posterior_mixing_probs.shape == [2, 4, 3]


def test_sparsity_losses_by_hand():
  p = tf.constant([[1., 0., 0., 0.], [1., 1., 1., 1.]])
  within, between = losses.capsule_entropy(p)
  np.testing.assert_allclose(within, (0 + math.log(4)) / 2, rtol=1e-6)
  agg = np.array([2, 1, 1, 1]) / 5.
  np.testing.assert_allclose(between, -(agg * np.log(agg)).sum(), rtol=1e-6)
  kl_w, _ = losses.neg_capsule_kl(p)
  np.testing.assert_allclose(kl_w, within - math.log(4), rtol=1e-5)
  # l2: per-example totals (1, 4) vs K/10 = .4; per-capsule totals vs B/10.
  w, b = losses.caps_pres_l2(p, num_classes=10.)
  np.testing.assert_allclose(w, ((1 - .4) ** 2 + (4 - .4) ** 2) / 2,
                             rtol=1e-6)
  np.testing.assert_allclose(
      b, -((2 - .2) ** 2 + 3 * (1 - .2) ** 2) / 4, rtol=1e-6)


def test_probe_sees_stopped_gradient():
  probe = losses.ClassificationProbe(4, 3)
  feats = tf.Variable(tf.random.normal([5, 4]))
  with tf.GradientTape() as tape:
    res = probe(feats, tf.constant([0, 1, 2, 0, 1]))
  assert tape.gradient(res.xe, feats) is None
  assert res.logits.shape == [5, 3]
  labels = np.array([0, 1, 2, 0, 1])
  logits = res.logits.numpy()
  np.testing.assert_array_equal(res.pred.numpy(), np.argmax(logits, 1))
  assert float(res.acc) == pytest.approx(np.mean(np.argmax(logits, 1)
                                                 == labels))
  log_softmax = logits - np.log(np.sum(np.exp(logits), 1, keepdims=True))
  assert float(res.xe) == pytest.approx(
      -np.mean(log_softmax[np.arange(5), labels]), rel=1e-5)


def test_tiny_scae_forward_loss_and_gradients():
  model = SCAE(TINY)
  images = tf.random.uniform([4, 20, 20, 1])
  labels = tf.constant([0, 1, 2, 3])
  with tf.GradientTape() as tape:
    out = model(images, labels, training=True)
    loss = model.loss(out)
  grads = tape.gradient(loss, model.trainable_variables)
  no_grad = [v.name for v, g in zip(model.trainable_variables, grads)
             if g is None]
  assert no_grad == ['scae/object_capsules/capsule_likelihood/dummy_vote:0']
  assert np.isfinite(loss.numpy())
  assert out.posterior_mixing_probs.shape == [4, 4, 3]
  assert out.top_down_per_caps_rec.mode.shape == [12, 20, 20, 1]
  lean = model.forward(images, labels, full=False)
  assert lean.rec_mode is None
  np.testing.assert_allclose(model.loss(lean), model.loss(
      model(images, labels)), rtol=1e-5)


def test_tf1_rmsprop_update_rule():
  var = tf.Variable([1., 2.])
  opt = TF1RMSProp([var], learning_rate=.1, decay=.9, momentum=.5,
                   epsilon=1e-2, lr_decay=False)
  g = np.array([.5, -1.], np.float32)
  ms = 1 + (g * g - 1) * np.float32(1 - np.float32(.9))
  mom = .1 * g / np.sqrt(ms + 1e-2)
  opt.apply([tf.constant(g)])
  np.testing.assert_allclose(var.numpy(), [1., 2.] - mom, rtol=1e-6)
  np.testing.assert_allclose(opt.ms[0].numpy(), ms, rtol=1e-6)
  opt.apply([tf.constant(g)])
  ms2 = ms + (g * g - ms) * .1
  mom2 = .5 * mom + .1 * g / np.sqrt(ms2 + 1e-2)
  np.testing.assert_allclose(var.numpy(), [1., 2.] - mom - mom2, rtol=1e-6)
  assert int(opt.step.numpy()) == 2


def test_exponential_decay_and_upstream_switch():
  np.testing.assert_allclose(exponential_decay(20000, 3e-5), 3e-5 * .96 ** 2,
                             rtol=1e-6)
  assert float(exponential_decay(20000, 3e-5, decay=False)) == np.float32(3e-5)


def test_configs():
  assert configs.get_config('mnist') is configs.MNIST
  assert configs.MNIST_ORIGINAL.prior_within_example_constant == 4.3
  with pytest.raises(ValueError, match='Unknown config'):
    configs.get_config('imagenet')
  with pytest.raises(ValueError, match='template_nonlin'):
    configs.MNIST.replace(template_nonlin='swish')
  quiet = configs.MNIST.without_noise()
  assert quiet.obj_decoder_noise_type is None


def test_affine_composition_equals_the_3x3_product():
  rng = np.random.RandomState(3)
  outer = tf.constant(rng.randn(4, 1, 6).astype(np.float32))
  inner = tf.constant(rng.randn(4, 5, 6).astype(np.float32))
  a = math_ops.geometric_transform(outer, as_matrix=True)
  b = math_ops.geometric_transform(inner, as_matrix=True)
  product = tf.reshape(tf.matmul(tf.broadcast_to(a, b.shape), b)[..., :2, :],
                       [4, 5, 6])
  np.testing.assert_allclose(math_ops.transformed_votes(outer, inner),
                             product, rtol=1e-6, atol=1e-7)


def test_masked_attention_is_exactly_hard_with_zero_query_key_gradients():
  # The original's float mask makes each row one-hot with weight exactly 1;
  # tf.nn.softmax gives 0.99999994 on some CPUs (AVX2), which leaks small
  # gradients into the queries and keys that the original never had.
  rng = np.random.RandomState(0)
  queries = tf.constant(rng.randn(8, 24, 16), tf.float32)
  keys = tf.constant(rng.randn(8, 24, 16), tf.float32)
  values = tf.constant(rng.randn(8, 24, 16), tf.float32)
  presence = tf.constant(rng.uniform(.5, .53, (8, 24)), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch([queries, keys])
    out = set_transformer.qkv_attention(queries, keys, values, presence)
  winner = tf.argmax(presence, 1)
  expected = tf.gather(values, winner, batch_dims=1)[:, tf.newaxis]
  np.testing.assert_array_equal(out.numpy(),
                                np.broadcast_to(expected, out.shape))
  for g in tape.gradient(out, [queries, keys]):
    assert not np.any(g.numpy())
