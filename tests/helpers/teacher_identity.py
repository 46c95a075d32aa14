"""The run folder and identity (`run.json`'s settings) that
`run/train_teacher.py` resolves its flags to, for several flag sets, without
training: run as `python teacher_identity.py` in an empty folder (the
default --logdir is relative), one JSON argv list a line on stdin; prints
one JSON [logdir, settings] a line.

The script's own `_train` runs with `training.check_logdir` replaced by a
function that records what it is handed and stops: the library hands it
the folder and the identity before anything is written, so this reads what
a run would write into `run.json` and nothing else. It relies on that call
alone, so the same harness wrote tests/golden/teacher_run_json.json from
the code before the teacher's run spec and checks the code after.
"""

import importlib.util
import json
import pathlib
import sys

from scae_tf import training

SCRIPT = pathlib.Path(__file__).resolve().parents[2] / 'run' / 'train_teacher.py'


class _Resolved(Exception):
  """The run's folder and identity, as the library resolved them."""


def _record(logdir, settings, overwrite=False):
  del overwrite
  raise _Resolved(logdir, settings)


def main():
  spec = importlib.util.spec_from_file_location('train_teacher', SCRIPT)
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  training.check_logdir = _record
  for line in sys.stdin:
    script.FLAGS.unparse_flags()
    script.FLAGS([str(SCRIPT)] + json.loads(line))
    try:
      script._train()  # pylint: disable=protected-access
      raise AssertionError('the run was not resolved')
    except _Resolved as resolved:
      print(json.dumps(list(resolved.args)), flush=True)


if __name__ == '__main__':
  main()
