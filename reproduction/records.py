"""A stage as data, and the record a finished stage leaves in the workdir
(`<workdir>/stages/<name>.json`): what `stages` runs and `report` reads."""

import dataclasses
import json
import os
from typing import Mapping, Optional, Tuple

STAGES_DIR = 'stages'


@dataclasses.dataclass(frozen=True)
class Stage:
  """name; kind (`stages.KINDS`); needs: the names of the stages it reads; settings:
  JSON-able, its identity; output: its folder (a checkpoint folder for an
  adopted model); adopted: made outside this workdir; model, classifier:
  what it is about; estimate_s: its measured-cost estimate, None if
  unmeasured; part_of: a shard's attack stage, which merges the shards."""
  name: str
  kind: str
  needs: Tuple[str, ...]
  settings: Mapping
  output: str
  adopted: bool = False
  model: Optional[str] = None
  classifier: Optional[str] = None
  estimate_s: Optional[float] = None
  part_of: Optional[str] = None


#: The settings of a shard stage that its attack stage's have not.
SHARD_KEYS = ('shard', 'shards')
#: The kinds of stage whose folder holds an attack's files: one run, or
#: the merge of its shards.
ATTACK_KINDS = ('attack', 'attack_merge')


def record_path(workdir: str, name: str) -> str:
  return os.path.join(workdir, STAGES_DIR, name.replace('/', '.') + '.json')


def read_record(workdir: str, name: str) -> Optional[dict]:
  path = record_path(workdir, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def to_json(value):
  return json.loads(json.dumps(value))


def status(stage: Stage, workdir: str) -> str:
  """'adopted', 'done' (finished with these settings), 'merged' (a shard
  whose attack stage is done with its settings: nothing left to do),
  'changed' (finished with others) or 'todo'."""
  if stage.adopted:
    return 'adopted'
  if stage.part_of is not None:
    whole = read_record(workdir, stage.part_of)
    if whole is not None and whole['settings'] == to_json(
        {k: v for k, v in stage.settings.items() if k not in SHARD_KEYS}):
      return 'merged'
  record = read_record(workdir, stage.name)
  if record is None:
    return 'todo'
  return 'done' if record['settings'] == to_json(stage.settings) else 'changed'
