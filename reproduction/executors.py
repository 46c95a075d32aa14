"""Where the stages run: one after another in this process ('local'), or as
Ray tasks ('ray'), one stage per task, each started when the stages it
needs are finished, on whatever devices the cluster has (`ray start`, or a
SLURM launch of one). The protocol's win on several devices is running its
independent stages at once (four defences, sixteen attacks, the shards of
an attack split by sample), not splitting one batch of 100.
"""

import dataclasses
import os

from reproduction import records
from reproduction import stages as stages_lib

EXECUTORS = ('local', 'ray')
PLAN_FILE = 'plan.json'


def write_plan(workdir, stages, **about):
  """`<workdir>/plan.json`: every stage of the plan as data, and what made
  it (scale, dataset, adopted models, the command)."""
  from scae_tf import files  # pylint: disable=g-import-not-at-top
  os.makedirs(workdir, exist_ok=True)
  files.write_json(os.path.join(workdir, PLAN_FILE), dict(
      about, stages=[dataclasses.asdict(s) for s in stages]), sort_keys=True)


def run(stages, workdir, executor='local', redo=(), progress=True,
        log=print, ray_address=None, cpus_per_stage=1, gpus_per_stage=0):
  """Runs `stages` (in plan order) into `workdir`; returns their records
  by name. Stages finished with other settings are refused before any
  work unless named in `redo`."""
  if executor not in EXECUTORS:
    raise ValueError(f'Unknown executor {executor!r}; expected one of '
                     f'{EXECUTORS}.')
  # What reads a stage that is redone is redone after it.
  redo = stages_lib.redone(stages, redo)
  stages_lib.check_settings(stages, workdir, redo)
  if executor == 'local':
    return {s.name: stages_lib.run_stage(s, workdir, s.name in redo,
                                         progress, log) for s in stages}
  return _run_ray(stages, workdir, redo, log, ray_address, cpus_per_stage,
                  gpus_per_stage)


def _stage_task(stage, workdir, redo, *needed):
  del needed  # only waited for
  return stages_lib.run_stage(stage, workdir, redo, progress=False)


def _run_ray(stages, workdir, redo, log, address, cpus, gpus):
  try:
    import ray  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError('--executor=ray needs Ray: pip install -e .[ray]'
                      ) from None
  started = not ray.is_initialized()
  if started:
    ray.init(address=address, include_dashboard=False,
             log_to_driver=True, ignore_reinit_error=True)
  try:
    task = ray.remote(num_cpus=cpus, num_gpus=gpus)(_stage_task)
    refs = {}
    for stage in stages:
      refs[stage.name] = task.remote(
          stage, os.path.abspath(workdir), stage.name in redo,
          *[refs[n] for n in stage.needs if n in refs])
    log(f'{len(refs)} stages submitted to Ray '
        f'({ray.cluster_resources().get("CPU", 0):g} CPUs, '
        f'{ray.cluster_resources().get("GPU", 0):g} GPUs)')
    return dict(zip(refs, ray.get(list(refs.values()))))
  finally:
    if started:
      ray.shutdown()


def describe(stages, workdir):
  """The plan as text: each stage's status and estimated cost."""
  lines, remaining, unknown = [], 0., []
  width = max([28] + [len(s.name) for s in stages])
  for stage in stages:
    state = records.status(stage, workdir)
    if stage.estimate_s is None:
      cost = 'unmeasured'
    else:
      cost = f'{stage.estimate_s / 3600:.2f} h'
    if state in ('todo', 'changed'):
      if stage.estimate_s is None:
        unknown.append(stage.name)
      else:
        remaining += stage.estimate_s
    lines.append(f'{stage.name:<{width}} {state:<8} {cost:>11}  '
                 f'{stage.output}')
  lines.append(f'remaining: {remaining / 3600:.1f} h on one 2-core CPU, '
               'stage after stage, from the measured costs (COSTS in '
               'reproduction/scales.py)' + (
                   f'; not counted, unmeasured: {", ".join(unknown)}'
                   if unknown else ''))
  return '\n'.join(lines)
