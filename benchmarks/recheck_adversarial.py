"""An attack's successes re-classified through the public loading API.

  python benchmarks/recheck_adversarial.py --checkpoint=pretrained/hat_mnist_cpu \\
      --attack_dir=runs/reproduce_mnist_cpu/attacks/hat_PosK/ddn --classifier=PosK

Independent of the attack's own bookkeeping: loads the checkpoint with
`scae_tf.loading.load_model`, takes the adversarial and clean images that
the attack saved (`adversarial.npz`), recomputes each perturbation's L2
from the images, and predicts with the shipped cosine k-means on
`kmeans.collect_features` (the README's snippet). Prints JSON: whether
the clean predictions equal the ones the attack recorded, the share of the
recorded successes that the re-check finds misclassified, and the median
L2 recomputed against the recorded one. A small perturbation that only the
attack's own code sees as a success would show here as a share below 1.
"""

import json
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

flags.DEFINE_string('checkpoint', None, 'The attacked model.')
flags.DEFINE_string('attack_dir', None, "One attack's out_dir "
                    '(adversarial.npz, l2.npz).')
flags.DEFINE_enum('classifier', 'PosK', ['PriK', 'PosK'], 'The k-means.')
flags.mark_flags_as_required(['checkpoint', 'attack_dir'])
FLAGS = flags.FLAGS

KMEANS_KEY = dict(PriK=('prior_cosine', 'prior'),
                  PosK=('posterior_cosine', 'posterior'))


def main(argv):
  del argv
  import numpy as np  # pylint: disable=g-import-not-at-top
  from scae_tf import kmeans  # pylint: disable=g-import-not-at-top
  from scae_tf.loading import load_model  # pylint: disable=g-import-not-at-top

  loaded = load_model(FLAGS.checkpoint)
  key, features_key = KMEANS_KEY[FLAGS.classifier]
  if key not in loaded.kmeans:
    raise app.UsageError(f'{FLAGS.checkpoint} has no {key} k-means beside it '
                         '(run/evaluate.py writes it).')
  with np.load(os.path.join(FLAGS.attack_dir, 'adversarial.npz')) as z:
    adversarial, clean, labels = z['adversarial'], z['clean'], z['labels']
  with np.load(os.path.join(FLAGS.attack_dir, 'l2.npz')) as z:
    recorded = {k: z[k] for k in ('success', 'clean_correct', 'clean_pred',
                                  'attack_l2')}

  def predict(images):
    features = kmeans.collect_features(loaded.model, images)[features_key]
    return loaded.kmeans[key].predict(features)

  print(json.dumps(recheck(predict, adversarial, clean, labels, recorded),
                   indent=1))


def recheck(predict, adversarial, clean, labels, recorded) -> dict:
  """The numbers the script prints; `predict(images) -> labels` is the
  classifier, `recorded` the attack's l2.npz arrays."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  # Failed samples are stored as NaN; they are not re-checked.
  finite = np.isfinite(adversarial).all(axis=(1, 2, 3))
  adversarial = np.where(finite[:, None, None, None], adversarial, clean)
  clean_pred, adversarial_pred = predict(clean), predict(adversarial)
  l2 = np.sqrt(((adversarial - clean) ** 2).sum(axis=(1, 2, 3)))
  broken = np.asarray(recorded['success'], bool) & np.asarray(
      recorded['clean_correct'], bool)
  some = bool(broken.any())
  return dict(
      samples=int(labels.size),
      clean_predictions_equal_recorded=bool(
          np.array_equal(clean_pred, recorded['clean_pred'])),
      recorded_successes=int(broken.sum()),
      misclassified_on_recheck=float(
          np.mean(adversarial_pred[broken] != labels[broken])) if some
      else None,
      median_l2_recomputed=float(np.median(l2[broken])) if some else None,
      median_l2_recorded=float(np.median(
          np.asarray(recorded['attack_l2'])[broken])) if some else None,
      images_in_box=bool(adversarial.min() >= 0. and adversarial.max() <= 1.))


if __name__ == '__main__':
  app.run(main)
