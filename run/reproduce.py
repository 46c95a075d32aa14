"""The paper's protocol as one resumable command: the teacher, the
defences, their k-means (Tables 3, 5, 7), the paper's attack and the
adaptive attacks on every model and k-means classifier (Tables 6, 8 and
the worst case), then the tables and figures.

  python run/reproduce.py --scale=cpu --dry_run
  python run/reproduce.py --scale=cpu --teacher=pretrained/teacher_mnist_cpu \\
      --adopt=hat=pretrained/hat_mnist_cpu,ntat=pretrained/ntat_mnist_cpu
  python run/reproduce.py --scale=paper --dataset=fashion_mnist
  python run/reproduce.py --scale=cpu --executor=ray --ray_address=auto
  python run/reproduce.py --scale=cpu --executor=ray --shards=4

--scale=paper is section 6.2 with Tables 1, 2 and 4 (hundreds of CPU
hours: see --dry_run); --scale=cpu the CPU campaign (RESULTS.md), a
deviation written into every output. Each stage writes into its own folder
under --workdir and is skipped when finished with the same settings; a
stage finished with other settings is refused, naming the keys that
differ, unless --redo names it. Re-running the command after an
interruption finishes the remaining stages. --adopt (and --teacher) use
existing models as they are instead of training them. --shards=N splits
each attack by sample into N stages that run at once under Ray, and a
stage that merges them into the files of one unsharded run.

Writes <workdir>/report/: tables.md and tables.csv (paper, ours, ours -
paper), robustness.md (every attack at L2 <= 0.5, 1, ..., the threshold,
the worst case, median minimal L2, noise control), accuracy_vs_l2_<PriK|PosK>.png with figures.md (captions), and
manifest.json (every stage's settings, output and wall time, the versions
and the commit).
"""

from absl import app
from absl import flags

# TensorFlow-free: the flags are checked before it loads.
from reproduction import executors
from reproduction import scales
from scae_tf import cli

flags.DEFINE_enum('dataset', 'mnist', ['mnist', 'fashion_mnist'],
                  'The data set of every stage.')
flags.DEFINE_enum('scale', 'cpu', sorted(scales.SCALES),
                  'paper (section 6.2) or cpu (the CPU campaign, a '
                  'deviation).')
flags.DEFINE_string('workdir', None, 'Folder of the stages (default: '
                    'runs/reproduce_<dataset>_<scale>).')
flags.DEFINE_list('stages', [], 'Run only these stages and those they need '
                  '(names from --dry_run, or prefixes ending in /: '
                  'attack/).')
flags.DEFINE_list('redo', [], 'Run these stages again (their outputs are '
                  'restarted).')
flags.DEFINE_string('teacher', None, 'Adopt this teacher (a run folder or '
                    'checkpoint) instead of training one.')
flags.DEFINE_list('adopt', [], 'model=path pairs: adopt these models '
                  '(teacher, at, ad, hat, ntat, margin_at) as they are.')
flags.DEFINE_bool('dry_run', False, 'Print the plan with each stage\'s '
                  'status and measured-cost estimate; run nothing.')
flags.DEFINE_enum('executor', 'local', list(executors.EXECUTORS),
                  'local (stage after stage, here) or ray (one task per '
                  'stage; pip install -e .[ray]).')
flags.DEFINE_string('ray_address', None, 'A Ray cluster (auto: the one '
                    '`ray start` made); default: a local one.')
flags.DEFINE_float('cpus_per_stage', 1, 'Ray resources of a stage.')
flags.DEFINE_float('gpus_per_stage', 0, 'Ray resources of a stage.')
flags.DEFINE_integer('shards', 1, 'Split every attack stage by sample into '
                     'this many shard stages (attack/<model>/<classifier>/'
                     'shard<i>of<N>), which Ray runs at once, and a stage '
                     'that merges them into the files of one run.',
                     lower_bound=1)
flags.DEFINE_bool('progress', True, 'Show progress bars (local executor).')
FLAGS = flags.FLAGS


def _adopted():
  adopt = {}
  for pair in FLAGS.adopt:
    name, sep, path = pair.partition('=')
    if not sep or not name or not path:
      raise cli.UsageError(f'--adopt takes model=path pairs, got {pair!r}.')
    adopt[name] = path
  if FLAGS.teacher:
    if 'teacher' in adopt:
      raise cli.UsageError('give --teacher or --adopt=teacher=..., not both.')
    adopt['teacher'] = FLAGS.teacher
  return adopt


def _run():
  from reproduction import stages  # pylint: disable=g-import-not-at-top
  adopt = _adopted()
  workdir = FLAGS.workdir or f'runs/reproduce_{FLAGS.dataset}_{FLAGS.scale}'
  scale = scales.get_scale(FLAGS.scale)
  plan = stages.plan(FLAGS.dataset, scale, workdir, adopt, FLAGS.shards)
  chosen = stages.select(plan, FLAGS.stages)
  unknown = sorted(set(FLAGS.redo) - {s.name for s in chosen})
  if unknown:
    raise cli.UsageError(f'--redo names stages not in the plan: {unknown}.')
  if scale.deviation:
    cli.log(f'DEVIATION from the paper: {scale.deviation}')
  if FLAGS.dry_run:
    print(executors.describe(chosen, workdir))
    return
  executors.write_plan(workdir, plan, scale=scale.name,
                       dataset=FLAGS.dataset, deviation=scale.deviation,
                       adopted=adopt, command=cli.resume_command())
  executors.run(chosen, workdir, FLAGS.executor, redo=FLAGS.redo,
                progress=FLAGS.progress, log=cli.log,
                ray_address=FLAGS.ray_address,
                cpus_per_stage=FLAGS.cpus_per_stage,
                gpus_per_stage=FLAGS.gpus_per_stage)
  if any(s.kind == 'report' for s in chosen):
    print(open(f'{workdir}/report/tables.md').read())


def main(argv):
  return cli.run(argv, _run, resumable=True)


if __name__ == '__main__':
  app.run(main)
