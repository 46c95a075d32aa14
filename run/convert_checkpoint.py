"""Converts a TF1 checkpoint of the original SCAE (upstream or the paper
authors' fork) into the port's TF2 format, and prints a report.

  python run/convert_checkpoint.py --tf1=path/to/model.ckpt --config=mnist \
      --out=converted/teacher

The scope (none for upstream `train.py`, `SCAE/` or `STU/` for the fork) is
detected unless given with --scope. Optimiser slots, global_step, EMA and
summary variables are ignored unless --with_optimizer.
"""

import json
import sys

from absl import app
from absl import flags

flags.DEFINE_string('tf1', None, 'TF1 checkpoint prefix, .index file or dir.')
flags.DEFINE_string('config', 'mnist', 'Named config of the checkpoint.')
flags.DEFINE_string('out', None, 'Output TF2 checkpoint prefix.')
flags.DEFINE_string('scope', None, "Variable scope, e.g. 'SCAE' or 'STU'; "
                    'detected when omitted.')
flags.DEFINE_bool('with_optimizer', False,
                  'Also convert the RMSProp slots and global_step.')
flags.mark_flags_as_required(['tf1', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  del argv
  # Imported here so that --help answers without loading TensorFlow.
  from scae_tf import checkpoints  # pylint: disable=g-import-not-at-top
  from scae_tf import configs  # pylint: disable=g-import-not-at-top
  from scae_tf.model import SCAE  # pylint: disable=g-import-not-at-top
  from scae_tf.optim import TF1RMSProp  # pylint: disable=g-import-not-at-top

  try:
    config = configs.get_config(FLAGS.config)
    model = SCAE(config)
    # Only the slots and the step are restored and saved; the recipe's
    # hyper-parameters are chosen again by the run that continues.
    optimizer = (TF1RMSProp(model.trainable_variables)
                 if FLAGS.with_optimizer else None)
    report = checkpoints.load_tf1_checkpoint(model, FLAGS.tf1, FLAGS.scope,
                                             optimizer=optimizer)
  except (ValueError, FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  report['config'] = config.name
  report['out'] = checkpoints.save_tf2_checkpoint(model, FLAGS.out, optimizer)
  if optimizer is not None:
    report['global_step'] = int(optimizer.step.numpy())
  print(json.dumps(report, indent=1))
  return 0


if __name__ == '__main__':
  app.run(main)
