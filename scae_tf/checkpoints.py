"""Checkpoints: TF1 checkpoints of the original code, and the port's own.

TF1 checkpoints come in two namings:

* upstream `train.py` (google-research / akosiorek): no scope prefix, e.g.
  `conv_net_2d/conv_2d_0/w`; they also hold EMA and summary variables;
* the paper authors' fork: a scope prefix, `SCAE/...` for a teacher and
  `STU/...` for a defended student.

After the prefix both use Sonnet 1 names. `tf1_variable_map` lists, for a
port model, the Sonnet 1 name of every variable; the loader matches names
and shapes strictly and loads nothing unless everything matches.
The port's own runs use TF2 object-based checkpoints (`tf.train.Checkpoint`).
"""

import collections
import dataclasses
import glob
import json
import os
import re
import uuid
from typing import Dict, Optional

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from scae_tf import files

# Variables written by TF1 training that are not model weights.
_OPTIMIZER_SLOT = re.compile(r'/(RMSProp(_1)?|Adam(_1)?|Momentum)$')
_NON_MODEL = re.compile(
    r'(^|/)(global_step|beta[12]_power)$|ExponentialMovingAverage|'
    r'(^|/)(ema|summaries?|moving_average)(/|$)')


def tf1_variable_map(model) -> Dict[str, tf.Variable]:
  """Sonnet 1 name (without scope prefix) -> the port's variable."""
  names = {}
  enc = model.part_encoder
  for i, (w, b) in enumerate(zip(enc.cnn.kernels, enc.cnn.biases)):
    names[f'conv_net_2d/conv_2d_{i}/w'] = w
    names[f'conv_net_2d/conv_2d_{i}/b'] = b
  names['capsule_image_encoder/add/b'] = enc.embedding_bias
  names['capsule_image_encoder/conv_2d/w'] = enc.head_w
  names['capsule_image_encoder/conv_2d/b'] = enc.head_b

  dec = model.template_decoder
  names['template_based_image_decoder/templates'] = dec.template_logits
  if dec.use_alpha_channel:
    names['template_based_image_decoder/templates_alpha'] = (
        dec.templates_alpha)
    names['template_based_image_decoder/bg_mixing_logit'] = (
        dec.bg_mixing_logit)
  else:
    names['template_based_image_decoder/temperature_logit'] = (
        dec.temperature_logit)
  if dec.colorize:
    _add_linears(names, 'template_based_image_decoder/mlp',
                 dec.color_mlp.layers)
  names['template_based_image_decoder/bg_value'] = dec.bg_value

  st = model.set_transformer
  _add_linears(names, 'set_transformer', [st.input_linear])
  for block in st.blocks:
    prefix = f'set_transformer/{block.name}'
    _add_attention(names, prefix + '/multi_head_qkv_attention',
                   block.attention)
    if block.layer_norm:
      for norm in (block.norm, block.norm_1):
        names[f'{prefix}/{norm.name}/gamma'] = norm.gamma
        names[f'{prefix}/{norm.name}/beta'] = norm.beta
    _add_linears(names, prefix + '/mlp', block.mlp.layers)
  _add_linears(names, 'set_transformer', [st.output_linear])
  names['set_transformer/inducing_points'] = st.inducing_points
  _add_attention(names, 'set_transformer/multi_head_qkv_attention', st.pool)

  obj = model.object_capsules
  layer = 'image_capsule/capsule_layer'
  for mlp in (obj.params_mlp, obj.caps_mlp):
    for lin in mlp.layers:
      names[f'{layer}/{mlp.name}/{lin.name}/weights'] = lin.weights
      if lin.b is not None:
        names[f'{layer}/{mlp.name}/{lin.name}/add/b'] = lin.b
  names[f'{layer}/add/b'] = obj.ccr_bias
  names[f'{layer}/add_1/b'] = obj.pres_logit_per_caps_bias
  names[f'{layer}/add_2/b'] = obj.pres_logit_per_vote_bias
  names[f'{layer}/add_3/b'] = obj.scale_per_vote_bias
  names[f'{layer}/cpr_static'] = obj.cpr_static
  names['image_capsule/capsule_likelihood/dummy_vote'] = (
      obj.likelihood.dummy_vote)

  for probe in (model.posterior_probe, model.prior_probe):
    _add_linears(names, f'image_autoencoder/{probe.name}', [probe.linear])
  return names


def _add_linears(names, prefix, layers):
  for lin in layers:
    names[f'{prefix}/{lin.name}/w'] = lin.w
    names[f'{prefix}/{lin.name}/b'] = lin.b


def _add_attention(names, prefix, attention):
  layers = [lin for head in attention.heads for lin in head]
  _add_linears(names, prefix, layers + [attention.output])


class CheckpointMismatchError(ValueError):
  """The checkpoint does not fit the model; nothing was loaded."""


class CorruptCheckpointError(ValueError):
  """A checkpoint file cannot be read back: truncated, corrupt, or not a
  checkpoint at all."""


# What TF raises on a damaged file: OpError (DataLoss, NotFound, ...), and
# IndexError for a data file shorter than its index says.
_READ_ERRORS = (tf.errors.OpError, IndexError)


def _unreadable(name, error):
  reason = getattr(error, 'message', None) or str(error)
  return CorruptCheckpointError(
      f'{name} is not a readable checkpoint file (corrupt or truncated: '
      f'{reason.splitlines()[0] if reason else type(error).__name__}).')


def open_checkpoint(prefix: str):
  """A reader of the checkpoint `prefix`; CorruptCheckpointError naming its
  index file when that cannot be parsed."""
  try:
    return tf.train.load_checkpoint(prefix)
  except _READ_ERRORS as e:
    raise _unreadable(f'{prefix}.index', e) from None


def _data_files(prefix):
  found = sorted(glob.glob(glob.escape(prefix) + '.data-*'))
  return found[0] if len(found) == 1 else f'{prefix}.data-*'


def read_tensor(reader, name: str, prefix: str):
  """`reader.get_tensor(name)`; CorruptCheckpointError naming the data file
  when the bytes are missing or fail TF's checksum."""
  try:
    return reader.get_tensor(name)
  except _READ_ERRORS as e:
    raise _unreadable(_data_files(prefix), e) from None


def check_readable(prefix: str):
  """Reads every tensor of the checkpoint `prefix` back, which TF checks
  against the checksums of the index: CorruptCheckpointError names the file
  that fails."""
  reader = open_checkpoint(prefix)
  for name in reader.get_variable_to_shape_map():
    read_tensor(reader, name, prefix)


def check_shapes(path, config_name, model_shapes, ckpt_shapes, shown=8):
  """CheckpointMismatchError unless the {name: shape} of the model and of the
  checkpoint agree; it lists what does not fit (the first `shown` of each
  kind: another config's checkpoint would list every variable)."""
  missing = sorted(set(model_shapes) - set(ckpt_shapes))
  unexpected = sorted(set(ckpt_shapes) - set(model_shapes))
  misshaped = sorted(
      f'{n}: checkpoint {list(ckpt_shapes[n])} vs model '
      f'{list(model_shapes[n])}'
      for n in set(model_shapes) & set(ckpt_shapes)
      if tuple(ckpt_shapes[n]) != tuple(model_shapes[n]))
  if not (missing or unexpected or misshaped):
    return
  lines = [f'Checkpoint {path!r} does not match the model (config '
           f'{config_name!r}); nothing was loaded.']
  for title, items in (('missing from checkpoint', missing),
                       ('unexpected in checkpoint', unexpected),
                       ('shape mismatch', misshaped)):
    if items:
      lines.append(f'  {title} ({len(items)}):')
      lines.extend(f'    {i}' for i in items[:shown])
      if len(items) > shown:
        lines.append(f'    ... and {len(items) - shown} more')
  raise CheckpointMismatchError('\n'.join(lines))


def checkpoint_prefix(path: str) -> str:
  """The prefix of the checkpoint that `path` names: a prefix, its `.index`
  file, or a folder whose `checkpoint` file names one (not a run folder's
  `ckpt/` below it: `scae_tf.loading.find_checkpoint`)."""
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f'No checkpoint found in directory {path!r}.')
    return latest
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if not tf.io.gfile.exists(path + '.index'):
    raise FileNotFoundError(f'No checkpoint at {path!r} '
                            f'({path}.index does not exist).')
  return path


def detect_scope(ckpt_names) -> str:
  """Finds the prefix ('', 'SCAE/', 'STU/', ...) under which the model lives."""
  probe = 'conv_net_2d/conv_2d_0/w'
  scopes = sorted(n[:-len(probe)] for n in ckpt_names if n.endswith(probe))
  if not scopes:
    raise CheckpointMismatchError(
        f'No SCAE part-encoder variable (*{probe}) in the checkpoint; is it an '
        'SCAE checkpoint?')
  if len(scopes) > 1:
    raise CheckpointMismatchError(
        f'The checkpoint holds several models (scopes {scopes}); pass scope=.')
  return scopes[0]


def read_tf1_checkpoint(path: str, scope: Optional[str] = None,
                        with_optimizer: bool = False):
  """Reads a TF1 checkpoint into {sonnet-1 name: array} for one model scope.

  Returns (weights, extras): extras holds the optimiser slots
  (`<name>/RMSProp`, `<name>/RMSProp_1`) and `global_step` when
  `with_optimizer`; EMA and summary variables are always ignored.
  """
  path = checkpoint_prefix(path)
  reader = open_checkpoint(path)
  all_names = list(reader.get_variable_to_shape_map())
  if scope is None:
    scope = detect_scope(all_names)
  elif scope and not scope.endswith('/'):
    scope += '/'

  weights, extras = {}, {}
  for full in all_names:
    if _NON_MODEL.search(full):
      if with_optimizer and full.endswith('global_step'):
        extras['global_step'] = read_tensor(reader, full, path)
      continue
    if not full.startswith(scope):
      continue
    name = full[len(scope):]
    if _OPTIMIZER_SLOT.search(name):
      if with_optimizer:
        extras[name] = read_tensor(reader, full, path)
      continue
    weights[name] = read_tensor(reader, full, path)
  return weights, extras


def load_tf1_checkpoint(model, path: str, scope: Optional[str] = None,
                        optimizer=None):
  """Loads an original (upstream or fork) TF1 checkpoint into `model`.

  Shapes are checked strictly; on any mismatch a CheckpointMismatchError
  lists the missing, unexpected and mis-shaped variables and the model is left
  untouched. With `optimizer` (a `scae_tf.optim.TF1RMSProp`), its slots and
  step are restored too, to continue an original run.

  Returns a report dict (scope, number of tensors and parameters).
  """
  weights, extras = read_tf1_checkpoint(path, scope,
                                        with_optimizer=optimizer is not None)
  var_map = tf1_variable_map(model)
  check_shapes(path, model.config.name,
               {n: v.shape.as_list() for n, v in var_map.items()},
               {n: w.shape for n, w in weights.items()})

  slot_updates = []
  if optimizer is not None:
    slot_updates = optimizer.slot_values_from_tf1(var_map, extras)

  for name, var in var_map.items():
    var.assign(weights[name])
  for var, value in slot_updates:
    var.assign(value)
  return dict(path=checkpoint_prefix(path),
              n_tensors=len(var_map),
              n_params=int(sum(np.prod(w.shape) for w in weights.values())),
              optimizer_restored=optimizer is not None)


# --- The port's own (TF2 object-based) checkpoints -------------------------

CONFIG_SUFFIX = '.config.json'


def is_tf1_checkpoint(path: str) -> bool:
  """True for name-based (TF1 Saver) checkpoints, False for TF2 ones."""
  reader = open_checkpoint(path)
  return '_CHECKPOINTABLE_OBJECT_GRAPH' not in reader.get_variable_to_shape_map()


def save_config(config, prefix: str):
  files.write_json(prefix + CONFIG_SUFFIX, dataclasses.asdict(config),
                   sort_keys=True)


# Written by versions before the model config and the training recipe were
# split (`scae_tf.recipes`); they never changed the model.
_LEGACY_TRAINING_FIELDS = ('batch_size', 'learning_rate', 'lr_decay_steps',
                           'lr_decay_rate', 'rmsprop_decay',
                           'rmsprop_momentum')


def read_config(prefix: str):
  """The ScaeConfig saved beside a TF2 checkpoint, or None."""
  from scae_tf.configs import ScaeConfig  # pylint: disable=g-import-not-at-top
  try:
    with open(prefix + CONFIG_SUFFIX) as f:
      fields = json.load(f)
  except FileNotFoundError:
    return None
  for key in _LEGACY_TRAINING_FIELDS:
    fields.pop(key, None)
  return ScaeConfig(**fields)


def save_tf2_checkpoint(model, prefix: str, optimizer=None) -> str:
  """Writes the model (and optimiser) as a TF2 checkpoint plus its config."""
  objects = dict(model=model)
  if optimizer is not None:
    objects['optimizer'] = optimizer
  path = tf.train.Checkpoint(**objects).write(prefix)
  save_config(model.config, path)
  return path


def _model_shapes(source):
  """{path: shape} of the model's variables in a TF2 checkpoint reader, or
  of a model as `tf.train.Checkpoint(model=...)` saves it (written to memory
  and read back).

  A path is the variable's first path from `model` in TF's object graph. Not
  the checkpoint keys: each value is stored once, under its shortest path from
  the root, which may go through the optimiser.
  """
  if isinstance(source, tf.Module):
    folder = f'ram://scae_tf_{uuid.uuid4().hex}'
    try:
      written = tf.train.Checkpoint(model=source).write(folder + '/ckpt')
      # Not tf.train.load_checkpoint, which takes ram:// paths for folders.
      return _model_shapes(tf.compat.v1.train.NewCheckpointReader(written))
    finally:
      tf.io.gfile.rmtree(folder)
  graph = trackable_object_graph_pb2.TrackableObjectGraph()
  graph.ParseFromString(source.get_tensor('_CHECKPOINTABLE_OBJECT_GRAPH'))
  stored = source.get_variable_to_shape_map()
  roots = [c.node_id for c in graph.nodes[0].children
           if c.local_name == 'model']
  shapes, queue, seen = {}, collections.deque(), set(roots)
  queue.extend((node, '') for node in roots)
  while queue:
    node, path = queue.popleft()
    for attribute in graph.nodes[node].attributes:
      if attribute.name == 'VARIABLE_VALUE':
        shapes[path] = stored[attribute.checkpoint_key]
    for child in graph.nodes[node].children:
      if child.node_id not in seen:
        seen.add(child.node_id)
        queue.append((child.node_id, f'{path}/{child.local_name}'.lstrip('/')))
  return shapes


def load_tf2_checkpoint(model, path: str, optimizer=None):
  """Restores a TF2 checkpoint written by `save_tf2_checkpoint` or a
  CheckpointManager, refusing one of another architecture."""
  path = checkpoint_prefix(path)
  saved = read_config(path)
  if saved is not None and (saved.architecture()
                            != model.config.architecture()):
    diff = {k: (v, getattr(model.config, k))
            for k, v in saved.architecture().items()
            if v != getattr(model.config, k)}
    raise CheckpointMismatchError(
        f'Checkpoint {path!r} was written for config {saved.name!r}, which '
        f'differs from the model\'s {model.config.name!r} in (saved, model): '
        f'{diff}.')
  check_readable(path)
  # Compared before reading: a failed read leaves TF's restore bookkeeping
  # behind, which logs every unread value when it is collected.
  check_shapes(path, model.config.name, _model_shapes(model),
               _model_shapes(open_checkpoint(path)))
  objects = dict(model=model)
  if optimizer is not None:
    objects['optimizer'] = optimizer
  try:
    status = tf.train.Checkpoint(**objects).read(path)
    # The values left unread on purpose (the optimiser's, when it is not
    # restored; the save counter) are not worth a warning each.
    status.expect_partial()
    status.assert_existing_objects_matched()
  except (ValueError, AssertionError) as e:
    raise CheckpointMismatchError(
        f'Checkpoint {path!r} does not match the model (config '
        f'{model.config.name!r}): {e}') from None
  return dict(path=path, config=saved.name if saved else None)


def load_checkpoint(model, path: str, optimizer=None, scope=None):
  """Loads a TF1 (original or fork) or TF2 (port) checkpoint into `model`."""
  path = checkpoint_prefix(path)
  if is_tf1_checkpoint(path):
    return load_tf1_checkpoint(model, path, scope=scope, optimizer=optimizer)
  return load_tf2_checkpoint(model, path, optimizer=optimizer)
