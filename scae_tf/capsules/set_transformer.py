"""Set Transformer: the object capsule encoder (paper section 2.2).

Upstream: `capsules/attention.py`. Part capsules are a set; self-attention
layers mix them, and attention from learned inducing points (one per object
capsule) pools them into K object-capsule feature vectors.
"""

import math

import numpy as np

import sonnet as snt
import tensorflow as tf

from scae_tf.capsules import neural


def qkv_attention(queries, keys, values, presence=None):
  """Scaled dot-product attention with upstream's float presence mask.

  Upstream subtracts (1 - presence) * 1e32 from the logits, with presence the
  *float* sigmoid part presence, and only then scales by 1/sqrt(d). In float32
  this turns every attention into an (almost) hard attention on the most
  present part. That is the model the checkpoints were trained with, so we
  keep it rather than "fixing" it to boolean masking.

  Args:
    queries: [B, N, d]; keys: [B, M, d]; values: [B, M, d_v];
    presence: [B, M] or None.
  Returns:
    [B, N, d_v].
  """
  # queries may have batch size 1 (shared by all examples): matmul
  # broadcasts it.
  routing = tf.matmul(queries, keys, transpose_b=True)
  if presence is not None:
    routing -= (1. - presence[:, tf.newaxis]) * 1e32
  routing = _softmax(routing / math.sqrt(queries.shape[-1]))
  return tf.matmul(routing, values)


def _softmax(logits):
  """Softmax over the last axis, dividing by the sum.

  Under the float presence mask every row is one-hot, and the original
  computed the winner's weight as exactly 1, so queries and keys got exactly
  zero gradient. `tf.nn.softmax` multiplies by a reciprocal instead, which on
  some CPUs (Eigen's AVX2 path) gives 0.99999994 and small spurious
  gradients; a true division gives 1 on every CPU.
  """
  shifted = logits - tf.stop_gradient(tf.reduce_max(logits, -1,
                                                    keepdims=True))
  # min(., 0) is the identity here without XLA (gradient included: TF's
  # Minimum passes it to x where x <= y); under XLA it keeps exp finite.
  e = tf.exp(tf.minimum(shifted, 0.))
  total = tf.reduce_sum(e, -1, keepdims=True)
  # The mask puts logits near -1e31, where one float32 ulp is ~1e24. XLA
  # may round the logits feeding the max and those feeding the difference
  # differently (a division fused two ways), so the winner's shifted logit
  # comes out at +-1e24 instead of 0, and the row at 0 / 0.
  # Such a row is, as TF computes it, uniform over the logits equal to the
  # row's max (one of them, unless presences tie). Without XLA the winner's
  # term is exp(0) = 1, so `ok` always holds and neither values nor
  # gradients change.
  ok = (total >= 1.) & (total < np.inf)
  top = tf.cast(tf.equal(logits, tf.reduce_max(logits, -1, keepdims=True)),
                logits.dtype)
  winners = top / tf.reduce_sum(top, -1, keepdims=True)
  return tf.where(ok, e / tf.where(ok, total, 1.), tf.stop_gradient(winners))


class MultiHeadQKVAttention(snt.Module):
  """Per head: linear maps of q, k, v; then attention; then a joint linear.

  Linear layers are numbered in upstream's creation order: head h owns
  `linear_{3h}`, `linear_{3h+1}`, `linear_{3h+2}` (q, k, v), and the output
  layer is `linear_{3n}`.
  """

  def __init__(self, n_heads, query_size, value_size,
               name='multi_head_qkv_attention'):
    super().__init__(name=name)
    head_size = int(math.ceil(float(query_size) / n_heads))
    value_head = int(math.ceil(float(value_size) / n_heads))
    self.heads = []
    for h in range(n_heads):
      self.heads.append(tuple(
          neural.Linear(size_in, size_out, name=_linear_name(3 * h + i))
          for i, (size_in, size_out) in enumerate(
              [(query_size, head_size), (query_size, head_size),
               (value_size, value_head)])))
    self.output = neural.Linear(value_head * n_heads, value_size,
                                name=_linear_name(3 * n_heads))

  def __call__(self, queries, keys, values, presence=None):
    outputs = [qkv_attention(q(queries), k(keys), v(values), presence)
               for q, k, v in self.heads]
    return self.output(tf.concat(outputs, -1))


def _linear_name(i):
  return 'linear' + (f'_{i}' if i else '')


class SelfAttentionBlock(snt.Module):
  """Self-attention + residual, presence masking, layer norm, MLP + residual."""

  def __init__(self, n_heads, n_dims, layer_norm=True, name='self_attention'):
    super().__init__(name=name)
    self.attention = MultiHeadQKVAttention(n_heads, n_dims, n_dims)
    self.layer_norm = layer_norm
    if layer_norm:
      self.norm = neural.LayerNorm(n_dims, name='layer_norm')
      self.norm_1 = neural.LayerNorm(n_dims, name='layer_norm_1')
    self.mlp = neural.MLP(n_dims, [2 * n_dims, n_dims])

  def __call__(self, x, presence=None):
    y = self.attention(x, x, x, presence) + x
    if presence is not None:
      y *= presence[..., tf.newaxis]
    if self.layer_norm:
      y = self.norm(y)
    h = self.mlp(y) + y
    if self.layer_norm:
      h = self.norm_1(h)
    return h


class SetTransformer(snt.Module):
  """[B, P, d_in] part set -> [B, K, n_output_dims] object capsule features."""

  def __init__(self, input_size, n_layers, n_heads, n_dims, n_output_dims,
               n_outputs, layer_norm=True, name='set_transformer'):
    super().__init__(name=name)
    self.input_linear = neural.Linear(input_size, n_dims, name='linear')
    self.blocks = [
        SelfAttentionBlock(n_heads, n_dims, layer_norm,
                           name='self_attention' + (f'_{i}' if i else ''))
        for i in range(n_layers)
    ]
    self.output_linear = neural.Linear(n_dims, n_output_dims, name='linear_1')
    self.inducing_points = neural.glorot_uniform(
        [1, n_outputs, n_output_dims], 'inducing_points')
    self.pool = MultiHeadQKVAttention(n_heads, n_output_dims, n_output_dims)

  def __call__(self, x, presence=None):
    h = self.input_linear(x)
    for block in self.blocks:
      h = block(h, presence)
    z = self.output_linear(h)
    # The inducing points are the same for every example: project them once
    # ([1, K, d]) and let the attention matmul broadcast over the batch.
    return self.pool(self.inducing_points, z, z, presence)
