"""Converts a TF1 checkpoint of the original SCAE (upstream or the paper
authors' fork) into the port's TF2 format, and prints a report.

  python run/convert_checkpoint.py --tf1=path/to/model.ckpt --config=mnist \
      --out=converted/teacher

The config is the named config whose variables fit the checkpoint unless
given with --config; the scope (none for upstream `train.py`, `SCAE/` or
`STU/` for the fork) is detected unless given with --scope. Optimiser slots,
global_step, EMA and summary variables are ignored unless --with_optimizer.
An existing checkpoint at --out is replaced only with --overwrite.
"""

import json

from absl import app
from absl import flags

from scae_tf import cli
from scae_tf import configs

flags.DEFINE_string('tf1', None, 'TF1 checkpoint prefix, .index file or dir.')
flags.DEFINE_string('config', None, 'Named config of the checkpoint; default: '
                    'the one whose variables fit it.')
flags.DEFINE_string('out', None, 'Output TF2 checkpoint prefix, or an '
                    'existing folder (then FOLDER/ckpt).')
flags.DEFINE_bool('overwrite', False, 'Replace an existing checkpoint at '
                  '--out.')
flags.DEFINE_string('scope', None, "Variable scope, e.g. 'SCAE' or 'STU'; "
                    'detected when omitted.')
flags.DEFINE_bool('with_optimizer', False,
                  'Also convert the RMSProp slots and global_step.')
flags.mark_flags_as_required(['tf1', 'out'])
FLAGS = flags.FLAGS


def _convert():
  if FLAGS.config is not None:  # refused before TensorFlow loads
    configs.get_config(FLAGS.config)
  # Imported here so that --help and a bad flag answer without loading
  # TensorFlow.
  from scae_tf import loading  # pylint: disable=g-import-not-at-top
  report = loading.convert_tf1_checkpoint(
      FLAGS.tf1, FLAGS.out, FLAGS.config, scope=FLAGS.scope,
      with_optimizer=FLAGS.with_optimizer, overwrite=FLAGS.overwrite)
  print(json.dumps(report, indent=1))


def main(argv):
  return cli.run(argv, _convert)


if __name__ == '__main__':
  app.run(main)
