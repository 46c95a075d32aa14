"""Evaluates the robustness of an SCAE classifier to the evasion attack
(paper section 4 / 6.2; the defence code's `utilities.attack` protocol).

  python run/attack.py --checkpoint=runs/mnist_teacher --classifier=PosK
  python run/attack.py --checkpoint=path/model.ckpt --classifier=PriL \\
      --dataset=fashion_mnist --num_samples=1000 --out_dir=results/f_pril
  python run/attack.py --plot_only --out_dir=results/f_pril
  python run/attack.py --checkpoint=runs/mnist_teacher --classifier=PosK \
      --attack=all --num_samples=200
  python run/attack.py --plot_only --compare=dirA,dirB --labels=SCAE,HAT \\
      --out_dir=results/compare
  python run/attack.py --checkpoint=runs/mnist_teacher --shards=2 --shard=0 \\
      --out_dir=results/s0            # and --shard=1 into results/s1
  python run/attack.py --merge=results/s0,results/s1 --out_dir=results/all

--checkpoint: a training log directory, a TF2 checkpoint prefix of the port,
or an original / fork TF1 checkpoint. --classifier: PriK / PosK (k-means on
the prior / posterior presences; --kmeans defaults to the file that
`run/evaluate.py` writes beside the checkpoint,
`<prefix>.kmeans_<prior|posterior>_cosine.npz`; one fitted on another
checkpoint, dataset or preprocessing is refused unless
--allow_kmeans_mismatch) or PriL / PosL (the linear probes).
--num_samples random samples (seeded by --seed) of --split (default: the
paper's, MNIST test / Fashion-MNIST train) are attacked with --preset
(attacks.evasion.PRESETS; the flags after it override single settings,
and every report then names it with them: "paper_eval, modified: outer 2,
inner 10"), --batch_size at a time. Finished batches are saved under
<out_dir>/batches/ and skipped on a restart with the same settings;
--overwrite restarts, removing every output of the previous run first.
Ctrl-C or SIGTERM stops the attack within seconds (the batch in progress
is dropped) and prints what was kept and the command that resumes. Flags
that need no model are checked before TensorFlow loads.

--attack: one attack of attacks.registry (its flag's help lists them), several
joined by commas, or all. Several run on the same samples, each in
<out_dir>/<attack>/, with their per-sample worst case in --out_dir:
worst_case.npz / .json / .md and one accuracy_vs_l2.png with every curve.

--sanity (default on): the sanity checks of attacks.sanity. PGD-L2 at the
box's diameter (40 on MNIST: any image within reach) runs on the same
samples in <out_dir>/sanity_unbounded/; the report flags possible gradient
masking where it, or an attack without a budget ceiling, leaves a correctly
classified sample unbroken, where a robust accuracy rises with the budget,
and where it differs from the clean accuracy at L2 = 0. Written to
sanity.json / sanity.md in --out_dir and printed after the summary.

--shards=N --shard=i: this process attacks only batch b with b % N == i
(the batches are seeded by their number, so the shards' batches are those
of one run) into --out_dir (default: the usual one with _shard<i>of<N>),
whose settings record the shard; no reports. --merge=<the N shard
folders> --out_dir=<another folder> checks that they are the complete
shards of one run (else one line says what differs or lacks, and nothing
is written), copies their batches into --out_dir and writes the files of
the unsharded run, with the settings the shards recorded (so --merge takes
no attack flags).

Writes to --out_dir: l2.npz (per-sample perturbation amount: 0 for clean
errors, inf for failed attacks), adversarial.npz, summary.json, summary.md,
robust_accuracy.json (accuracy at every threshold 0..--plot_max) and
accuracy_vs_l2.png (paper Figures 2-5). Errors exit with status 1.
"""

import sys

from absl import app
from absl import flags

# TensorFlow-free (the attacks import it when they run).
from attacks import pipeline
from attacks import registry
from attacks.run_spec import AttackRun
from scae_tf import cli

flags.DEFINE_string('checkpoint', None, 'Training log directory, TF2 '
                    'checkpoint prefix or original / fork TF1 checkpoint.')
flags.DEFINE_string('config', None, 'Named config (scae_tf.configs); default: '
                    'the one saved beside a TF2 checkpoint, else the named '
                    'config whose variables fit the checkpoint.')
flags.DEFINE_string('classifier', 'PosK', 'PriK, PosK, PriL or PosL.')
flags.DEFINE_string('kmeans', None, 'KMeansClassifier file (.npz / .json) '
                    'for PriK / PosK; default: beside the checkpoint.')
flags.DEFINE_boolean('allow_kmeans_mismatch', False, 'Use a k-means file '
                     'fitted on another checkpoint, dataset or preprocessing '
                     '(refused by default).')
flags.DEFINE_string('dataset', 'mnist', 'mnist or fashion_mnist.')
flags.DEFINE_string('split', None, 'train or test; default: test for MNIST, '
                    'train for Fashion-MNIST (the paper\'s protocol).')
flags.DEFINE_string('data_dir', None, 'Folder of the IDX files.')
flags.DEFINE_string('preprocess', 'resize', 'resize, pad_center or pad_shift.')
flags.DEFINE_integer('num_samples', 5000, 'Random samples to attack.')
flags.DEFINE_integer('batch_size', 100, 'Samples attacked together.')
flags.DEFINE_integer('seed', 0, 'Seeds the sample choice and the attack.')
# The preset flags of the registry's attacks (--preset, --pgd_preset), with
# the run's defaults.
for _name, _entry in registry.ATTACKS.items():
  if _entry.preset_field:
    flags.DEFINE_string(
        _entry.preset_field,
        AttackRun.__dataclass_fields__[_entry.preset_field].default,
        f'The preset of --attack={_name}: {", ".join(_entry.presets)}.')
# Their override flags (--outer_iterations, --pgd_steps, ...): unset
# unless given.
for _fields in registry.override_flags().values():
  for _flag in _fields:
    getattr(flags, f'DEFINE_{_flag.kind}')(_flag.flag, None, _flag.help)
flags.DEFINE_string('attack', 'capsule', registry.help_text())
flags.DEFINE_float('eps', None, 'PGD budget (pgd_l2) or search ceiling '
                   '(pgd_l2_min); > 0.')
flags.DEFINE_string('gradient', None, 'The input gradient of every attack: '
                    'code (the training graph\'s, with its stop-gradients) '
                    'or full (the classifier\'s true gradient). Default: '
                    'code for the paper\'s attack, full for the adaptive '
                    'ones.')
flags.DEFINE_string('quantize', 'none', 'none, or 8bit: round every '
                    'successful image to k/255 (as saved in an 8-bit file), '
                    're-verify it, and count only the survivors.')
flags.DEFINE_string('out_dir', None, 'Output folder; default: '
                    'results/attack_<dataset>_<classifier>_<preset>, the '
                    'PGD preset for pgd_l2, "all" for all.')
flags.DEFINE_boolean('overwrite', False, 'Restart: first remove every '
                     'output of the run in --out_dir.')
flags.DEFINE_float('threshold', None, 'L2 threshold of the summary; default: '
                   'the paper\'s (4 MNIST, 5 Fashion-MNIST).')
flags.DEFINE_float('plot_max', None, 'Largest threshold of the curve; '
                   'default: threshold + 1.')
flags.DEFINE_boolean('plot_only', False, 'Only redraw the reports from the '
                     'saved results of --out_dir (or of --compare).')
flags.DEFINE_list('compare', None, 'Result folders to overlay in one plot '
                  '(with --plot_only; written to --out_dir).')
flags.DEFINE_list('labels', None, 'Curve labels for --compare.')
flags.DEFINE_boolean('progress', True, 'Show a progress bar.')
flags.DEFINE_boolean('sanity', True, 'Run the sanity checks (attacks.sanity) '
                     'after the attacks.')
flags.DEFINE_integer('shards', 1, 'Split the run by sample into this many '
                     'shards (with --shard), each a process of its own, '
                     'joined by --merge.')
flags.DEFINE_integer('shard', None, 'The shard this process attacks, 0 to '
                     '--shards - 1: the batches b with b % shards == shard, '
                     'into its own --out_dir.')
flags.DEFINE_list('merge', None, 'The folders of all --shards shards of one '
                  'run: checks them, and writes the unsharded run\'s files '
                  'into --out_dir (attack flags come from the shards).')
FLAGS = flags.FLAGS

#: The flags a --merge takes: the others come from the shards.
MERGE_FLAGS = ('merge', 'out_dir', 'overwrite', 'progress')


def _check_flags():
  """The checks that need no model, before TensorFlow loads: a bad flag is
  refused in a second. Returns the attack run the flags ask for (None for
  a merge or a redrawing)."""
  if FLAGS.merge:
    given = [f'--{f.name}' for f in FLAGS.get_flags_for_module(sys.argv[0])
             if f.present and f.name not in MERGE_FLAGS]
    if given:
      raise cli.UsageError('--merge takes the run\'s settings from the '
                           f'shards: drop {", ".join(given)}.')
    if not FLAGS.out_dir:
      raise cli.UsageError('--merge needs --out_dir, the merged run\'s '
                           'folder.')
    return None
  if FLAGS.shard is None and FLAGS.shards != 1:
    cli.check_positive('shards', FLAGS.shards)
    raise cli.UsageError(f'--shards={FLAGS.shards} needs --shard, the shard '
                         f'this process attacks (0 to {FLAGS.shards - 1}).')
  if FLAGS.compare and not FLAGS.plot_only:
    raise cli.UsageError('--compare needs --plot_only.')
  if FLAGS.compare and not FLAGS.out_dir:
    raise cli.UsageError('--compare needs --out_dir for the overlaid plot.')
  if FLAGS.plot_only and not (FLAGS.compare or FLAGS.out_dir):
    raise cli.UsageError('--plot_only needs --out_dir or --compare.')
  if FLAGS.plot_only:
    return None
  if not FLAGS.checkpoint:
    raise cli.UsageError('--checkpoint is required.')
  return _run_spec()


def _run_spec() -> AttackRun:
  """The run the flags ask for; building it checks everything that needs
  no model."""
  return AttackRun(
      FLAGS.checkpoint, FLAGS.classifier, config=FLAGS.config,
      kmeans=FLAGS.kmeans, allow_kmeans_mismatch=FLAGS.allow_kmeans_mismatch,
      dataset=FLAGS.dataset, split=FLAGS.split, data_dir=FLAGS.data_dir,
      preprocess=FLAGS.preprocess, num_samples=FLAGS.num_samples,
      batch_size=FLAGS.batch_size, seed=FLAGS.seed,
      attack=FLAGS.attack, eps=FLAGS.eps, gradient=FLAGS.gradient,
      quantize=FLAGS.quantize, out_dir=FLAGS.out_dir,
      overwrite=FLAGS.overwrite, threshold=FLAGS.threshold,
      plot_max=FLAGS.plot_max, sanity=FLAGS.sanity,
      shard=None if FLAGS.shard is None else (FLAGS.shard, FLAGS.shards),
      **{e.preset_field: getattr(FLAGS, e.preset_field)
         for e in registry.ATTACKS.values() if e.preset_field},
      **{field: _given(fields)
         for field, fields in registry.override_flags().items()})


def _given(fields):
  """{setting: the value of its flag} of the override flags given."""
  return {f.setting: getattr(FLAGS, f.flag) for f in fields
          if getattr(FLAGS, f.flag) is not None}


def _run():
  run = _check_flags()
  reports = dict(threshold=FLAGS.threshold, plot_max=FLAGS.plot_max)
  if FLAGS.compare:
    print(pipeline.compare_runs(FLAGS.compare, FLAGS.out_dir, FLAGS.labels,
                                FLAGS.dataset, log=cli.log, **reports))
    return
  checks = None
  if FLAGS.plot_only:
    summary = pipeline.redraw_reports(FLAGS.out_dir, FLAGS.dataset, **reports)
  else:
    if FLAGS.merge:
      result = pipeline.merge_shards(FLAGS.merge, FLAGS.out_dir,
                                     overwrite=FLAGS.overwrite,
                                     progress=FLAGS.progress, log=cli.log)
    else:
      result = pipeline.attack_checkpoint(run, progress=FLAGS.progress,
                                          log=cli.log)
    if result['summary'] is None:
      print(f'shard {FLAGS.shard} of {FLAGS.shards}: batches '
            f'{", ".join(map(str, result["batches"]))} in {result["out_dir"]}; '
            'when every shard is done: python run/attack.py --merge=<the '
            f'{FLAGS.shards} shard folders> --out_dir=<the merged run>')
      return
    summary, checks = result['summary'], result['sanity']
  # pylint: disable=g-import-not-at-top
  from attacks import protocol, sanity
  print(protocol.markdown_table(summary))
  if checks is not None:
    print(sanity.markdown(checks))


def main(argv):
  return cli.run(argv, _run, resumable=not FLAGS.plot_only)


if __name__ == '__main__':
  app.run(main)
