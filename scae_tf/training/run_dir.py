"""A run's folder: its identity (`run.json`), its log, and the guard that
keeps two different runs out of one folder."""

import dataclasses
import json
import os
import shutil

from scae_tf import files

RUN_FILE = 'run.json'
LOG_FILE = 'log.jsonl'


class RunMismatchError(ValueError):
  """The log directory holds a run with other settings."""


def run_settings(config, recipe=None, **settings):
  """The JSON-able identity of a run: its model config, its training recipe
  and the other settings that decide its future."""
  identity = dict(config=dataclasses.asdict(config), **settings)
  if recipe is not None:
    identity['recipe'] = dataclasses.asdict(recipe)
  return json.loads(json.dumps(identity))


def prepare_logdir(logdir, settings, overwrite=False):
  """Creates `logdir`, or checks that the run there has the same settings.

  Refuses (RunMismatchError) a directory that holds another run unless
  `overwrite`, which deletes it first. Returns True if a run is resumed.
  """
  path = os.path.join(logdir, RUN_FILE)
  if os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    if previous == settings:
      return True
    if not overwrite:
      diff = {k: (previous.get(k), settings.get(k))
              for k in sorted(set(previous) | set(settings))
              if previous.get(k) != settings.get(k)}
      raise RunMismatchError(
          f'{logdir} holds a run with other settings (previous, now): '
          f'{diff}. Use another --logdir, or --overwrite to delete it.')
    shutil.rmtree(logdir)
  elif os.path.isdir(logdir) and os.listdir(logdir) and not overwrite:
    raise RunMismatchError(
        f'{logdir} is not empty and holds no {RUN_FILE}; refusing to write '
        'into it (use --overwrite to delete it).')
  elif os.path.isdir(logdir):
    shutil.rmtree(logdir)
  os.makedirs(logdir, exist_ok=True)
  files.write_json(path, settings, sort_keys=True)
  return False


class JsonlLog:
  """Appends one JSON object per line; readable while training runs."""

  def __init__(self, path):
    self.path = path

  def write(self, record):
    with open(self.path, 'a') as f:
      f.write(json.dumps(record) + '\n')

  def truncate_after(self, step):
    """Drops records past `step`: a resumed run redoes those steps.

    Returns the largest `wall_time` among the kept records (0 if none), so a
    resumed run's clock continues where the interrupted one stopped instead
    of restarting at zero and folding two runs onto one time axis.
    """
    if not os.path.exists(self.path):
      return 0.0
    with open(self.path) as f:
      keep = [line for line in f if json.loads(line)['step'] <= step]
    files.write_text(self.path, ''.join(keep))
    return max((json.loads(line).get('wall_time', 0.0) for line in keep),
               default=0.0)
