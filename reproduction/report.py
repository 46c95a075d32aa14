"""The paper's tables and figures from the finished stages of a workdir.

Tables 3, 5, 6, 7 and 8 as Markdown and CSV, three columns per entry
(paper, ours, ours - paper), in %. The clean tables (3, 5, 7) are the fork's
cosine k-means on the train and test splits pooled, as the authors'
evaluation prints it (`kmeans/<model>`); the attacked
ones (6, 8) the paper's attack at the paper's threshold on the scale's
samples (`attack/<model>/<classifier>`), with the adaptive worst case
beside it where the attacks ran. Figures 2-5 analogue: one figure per
classifier with the paper's attack's curve and the worst case's curve of
every model. The paper gives its curves only as pictures, so no paper
curve is drawn; its numbers at the threshold are in the tables. A manifest
records the stages' settings, outputs, wall times, the versions and the
commit.
"""

import csv
import io
import json
import os
import platform
import subprocess
import sys

import numpy as np

from reproduction import records as records_lib
from reproduction import scales as scales_lib

KMEANS_KIND = dict(PriK='prior', PosK='posterior')


def _load_json(path):
  with open(path) as f:
    return json.load(f)


#: The split of the clean tables: the authors' evaluation prints the
#: k-means accuracy on the train and test splits pooled, and that is what
#: Tables 3, 5 and 7 report.
CLEAN_SPLIT = 'train+test'


def clean_accuracy(kmeans_prefix: str, classifier: str) -> float:
  """Accuracy (%) of the model's cosine k-means on `classifier`'s capsules
  on CLEAN_SPLIT, from the k-means report."""
  report = _load_json(kmeans_prefix + '.eval.json')
  kind = KMEANS_KIND[classifier]
  return 100. * report['results']['kmeans']['cosine'][kind][CLEAN_SPLIT]


def attack_results(out_dir: str):
  """(the paper's attack's accuracy at the threshold, the worst case's or
  None, its curve's L2 per sample, the worst case's or None), in %."""
  worst_path = os.path.join(out_dir, 'worst_case.json')
  if os.path.exists(worst_path):
    summary = _load_json(worst_path)['summary']
    with np.load(os.path.join(out_dir, 'worst_case.npz')) as z:
      paper_curve = z['perturbation_capsule'] if (
          'perturbation_capsule' in z.files) else None
      worst_curve = z['perturbation']
    paper = summary.get('capsule_accuracy_at_threshold')
    return (None if paper is None else 100. * paper,
            100. * summary['accuracy_at_threshold'], paper_curve,
            worst_curve)
  summary = _load_json(os.path.join(out_dir, 'summary.json'))
  with np.load(os.path.join(out_dir, 'l2.npz')) as z:
    curve = z['perturbation']
  return 100. * summary['accuracy_at_threshold'], None, curve, None


def _fmt(value):
  return '' if value is None else f'{value:.2f}'


def robustness_budgets(threshold: float):
  """The budgets of the robustness table: 0.5, then every integer up to the
  paper's threshold (0.5, 1, 2, 3, 4 on MNIST)."""
  return (0.5,) + tuple(float(t) for t in range(1, int(threshold) + 1))


def median_minimal_l2(amounts, clean_correct) -> float:
  """The median amount over the correctly classified samples: the median
  minimal L2 of a minimal-norm attack (inf when it broke fewer than half)."""
  attacked = np.asarray(amounts, np.float64)[np.asarray(clean_correct, bool)]
  return float(np.median(attacked)) if attacked.size else float('nan')


def robustness(out_dir: str, budgets):
  """The rows of one attacked model and classifier: every attack of its
  worst case, then the worst case, then the noise control; each a dict of
  attack, accuracy (%) at each budget (None where not measured) and the
  median minimal L2. None when the folder has no worst case (one attack
  only)."""
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  worst_path = os.path.join(out_dir, 'worst_case.npz')
  if not os.path.exists(worst_path):
    return None
  with np.load(worst_path) as z:
    names = [str(n) for n in z['names']]
    curves = [(n, z[f'perturbation_{n}']) for n in names]
    curves.append(('worst case', z['perturbation']))
    clean_correct = z['clean_correct']
  rows = [dict(attack=name, clean=100. * float(np.mean(clean_correct)),
               accuracy=[100. * protocol.accuracy_at(a, t) for t in budgets],
               median_l2=median_minimal_l2(a, clean_correct))
          for name, a in curves]
  sanity_path = os.path.join(out_dir, 'sanity.json')
  noise = (_load_json(sanity_path).get('noise')
           if os.path.exists(sanity_path) else None)
  if noise:
    rows.append(dict(
        attack=f'Gaussian noise ({noise["draws"]} draws)', clean=rows[0]['clean'],
        accuracy=[100. * noise['accuracy'] if t == noise['threshold']
                  else None for t in budgets], median_l2=None))
  return rows


def robustness_markdown(stages, records, budgets, threshold):
  """Beyond the paper's tables: accuracy under every attack at several
  budgets, the worst case and the noise control, per classifier."""
  out = []
  for classifier in scales_lib.CLASSIFIERS:
    lines = []
    for stage in stages:
      if (stage.kind not in records_lib.ATTACK_KINDS or
          stage.classifier != classifier or stage.name not in records):
        continue
      for row in robustness(stage.output, budgets) or ():
        lines.append('| ' + ' | '.join(
            [scales_lib.MODEL_NAMES[stage.model], row['attack'],
             _fmt(row['clean'])] + [_fmt(a) for a in row['accuracy']] +
            ['' if row['median_l2'] is None else f'{row["median_l2"]:.2f}']
        ) + ' |')
    if not lines:
      continue
    out += [f'## Robustness of {classifier} under every attack (%)', '',
            '| model | attack | clean | ' + ' | '.join(
                f'L2 <= {t:g}' for t in budgets) + ' | median minimal L2 |',
            '|---' * (len(budgets) + 4) + '|'] + lines + [
                '', 'Accuracy on the attacked samples at each L2 budget; '
                'the worst case is the per-sample minimum over the attacks '
                'above it; the median minimal L2 is over the correctly '
                'classified samples (inf: fewer than half broken). The noise '
                f'row is Gaussian noise of L2 = {threshold:g}, clipped to '
                'the image box, counted correct only when right under every '
                'draw.', '']
  return '\n'.join(out)


def tables(dataset, stages, records):
  """The rows of every table: dicts with table, classifier, model, paper,
  ours, difference (and worst_case for the attacked tables)."""
  by_name = {s.name: s for s in stages}
  rows = []
  for table, (_, what, models) in scales_lib.TABLES.items():
    for classifier in scales_lib.CLASSIFIERS:
      for model in models:
        paper = scales_lib.PAPER.get((table, classifier, model), {}).get(
            dataset)
        ours = worst = None
        if what == 'clean' and f'kmeans/{model}' in records:
          ours = clean_accuracy(records[f'kmeans/{model}']['output'],
                                classifier)
        name = f'attack/{model}/{classifier}'
        if what == 'attacked' and name in records:
          ours, worst, _, _ = attack_results(by_name[name].output)
        row = dict(table=table, classifier=classifier,
                   model=scales_lib.MODEL_NAMES[model], paper=paper,
                   ours=ours, difference=(None if None in (paper, ours)
                                          else ours - paper))
        if what == 'attacked':
          row['worst_case'] = worst
        rows.append(row)
  return rows


def markdown(rows, dataset, threshold, deviation):
  out = []
  if deviation:
    out += [f'DEVIATION from the paper: {deviation}', '']
  for table, (title, what, _) in scales_lib.TABLES.items():
    mine = [r for r in rows if r['table'] == table]
    out += [f'## Table {table}: {title} ({dataset}, %)', '']
    extra = ' | adaptive worst case |' if what == 'attacked' else ' |'
    out.append('| classifier | model | paper | ours | ours - paper' + extra)
    out.append('|---' * (6 if what == 'attacked' else 5) + '|')
    for r in mine:
      cells = [r['classifier'], r['model'], _fmt(r['paper']),
               _fmt(r['ours']) or 'not run', _fmt(r['difference'])]
      if what == 'attacked':
        cells.append(_fmt(r['worst_case']))
      out.append('| ' + ' | '.join(cells) + ' |')
    if what == 'attacked':
      out += ['', f'Accuracy at L2 <= {threshold:g} on the attacked '
              "samples: the paper's attack (ours), and the per-sample worst "
              'case of every attack run (adaptive worst case).']
    else:
      out += ['', "The fork's cosine k-means, accuracy on the train and "
              'test splits pooled, as the paper reports it.']
    out.append('')
  return '\n'.join(out)


def csv_text(rows):
  buffer = io.StringIO()
  fields = ['table', 'classifier', 'model', 'paper', 'ours', 'difference',
            'worst_case']
  writer = csv.DictWriter(buffer, fields, lineterminator='\n')
  writer.writeheader()
  for r in rows:
    writer.writerow({k: _fmt(v) if isinstance(v, float) else v
                     for k, v in r.items()})
  return buffer.getvalue()


def figures(dataset, stages, records, out_dir, threshold, max_threshold,
            deviation):
  """One accuracy-vs-L2 figure per classifier; returns (path, caption)s."""
  from attacks import protocol  # pylint: disable=g-import-not-at-top
  made = []
  for classifier in scales_lib.CLASSIFIERS:
    curves = []
    for stage in stages:
      if stage.kind not in records_lib.ATTACK_KINDS or \
          stage.classifier != classifier or \
          stage.name not in records:
        continue
      _, _, paper_curve, worst_curve = attack_results(stage.output)
      label = scales_lib.MODEL_NAMES[stage.model]
      if paper_curve is not None:
        curves.append((f"{label}, paper's attack", paper_curve))
      if worst_curve is not None:
        curves.append((f'{label}, worst case', worst_curve))
    if not curves:
      continue
    path = protocol.plot_accuracy_vs_l2(
        curves, os.path.join(out_dir, f'accuracy_vs_l2_{classifier}.png'),
        max_threshold, threshold,
        f'{classifier} k-means on {dataset}: accuracy against the L2 budget'
        + (' (CPU scale, a deviation)' if deviation else ''))
    caption = (f'Accuracy of the {classifier} k-means classifier of every '
               'model against the L2 budget of the perturbation '
               "(Figures 2-5 analogue): the paper's attack, and the "
               'per-sample worst case of every attack run. The dotted line '
               f"is the paper's threshold, {threshold:g}.")
    made.append((path, caption))
  return made


def _versions():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    commit = subprocess.run(
        ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True,
        cwd=os.path.dirname(os.path.abspath(__file__)),
        check=False).stdout.strip() or None
  except OSError:
    commit = None
  return dict(python=sys.version.split()[0], tensorflow=tf.__version__,
              numpy=np.__version__, platform=platform.platform(),
              commit=commit)


def write(workdir, stage, log=print):
  """Writes tables.md, tables.csv, the figures, figures.md and
  manifest.json into `stage.output`; returns that folder."""
  from attacks import pipeline  # pylint: disable=g-import-not-at-top
  from scae_tf import files  # pylint: disable=g-import-not-at-top
  settings = stage.settings
  dataset, deviation = settings['dataset'], settings['deviation']
  manifest = _load_json(os.path.join(workdir, 'plan.json'))
  stages = [records_lib.Stage(**dict(s, needs=tuple(s['needs'])))
            for s in manifest['stages']]
  records = {}
  for s in stages:
    if s.name == stage.name:
      continue
    record = (dict(name=s.name, status='adopted', output=s.output)
              if s.adopted else records_lib.read_record(workdir, s.name))
    if record is not None:
      records[s.name] = record
  threshold, max_threshold = pipeline.thresholds(dataset)
  os.makedirs(stage.output, exist_ok=True)
  rows = tables(dataset, stages, records)
  files.write_text(os.path.join(stage.output, 'tables.md'),
                   markdown(rows, dataset, threshold, deviation))
  files.write_text(os.path.join(stage.output, 'tables.csv'), csv_text(rows))
  files.write_text(os.path.join(stage.output, 'robustness.md'),
                   robustness_markdown(stages, records,
                                       robustness_budgets(threshold),
                                       threshold))
  made = figures(dataset, stages, records, stage.output, threshold,
                 max_threshold, deviation)
  files.write_text(os.path.join(stage.output, 'figures.md'), ''.join(
      f'![{os.path.basename(p)}]({os.path.basename(p)})\n\n{c}\n\n'
      for p, c in made))
  files.write_json(os.path.join(stage.output, 'manifest.json'), dict(
      manifest, records=records, versions=_versions()), sort_keys=True)
  log(f'wrote {os.path.join(stage.output, "tables.md")}')
  return stage.output
