"""Unsupervised classification of SCAE capsule presences with k-means.

The SCAE paper (and the attack paper built on it) classify an image without
labels: cluster the object-capsule presences of the training set with
k-means (k = number of classes), map every cluster to one label by maximum
bipartite matching on the training set, then label a new image with the label
of its nearest centre. One module per step:

* `features`: the two feature kinds, `prior` and `posterior` presences
  (`collect_features`);
* `fit`: the two k-means variants, `cosine` (the fork's, the DEFAULT; the
  attack paper's numbers come from it) and `euclidean` (upstream's
  scikit-learn one);
* `matching`: the cluster -> label map (Hungarian matching);
* `classifier`: `KMeansClassifier` and `fit_kmeans_classifier`;
* `report`: `evaluate_kmeans`, `seed_spread`, `format_results`;
* `provenance`: the checkpoint and data a classifier was fitted on
  (`fitted_on`), and the check that it suits another use
  (`check_fitted_on`).

Accuracies use the cluster -> label map fitted on the training features
(`scipy.optimize.linear_sum_assignment`, maximising matched examples), as the
fork's classifier does; `evaluate_kmeans` also reports upstream's own
protocol, which re-matches clusters to labels on the evaluated set itself
(`*_rematched`).

The names below are the public API, used as `kmeans.fit_kmeans_classifier`.
"""

from scae_tf.kmeans.classifier import fit_kmeans_classifier
from scae_tf.kmeans.classifier import FORMAT_VERSION
from scae_tf.kmeans.classifier import KMeansClassifier
from scae_tf.kmeans.features import collect_features
from scae_tf.kmeans.features import FEATURE_KINDS
from scae_tf.kmeans.fit import cosine_assign
from scae_tf.kmeans.fit import euclidean_assign
from scae_tf.kmeans.fit import fit_cosine_kmeans
from scae_tf.kmeans.fit import fit_euclidean_kmeans
from scae_tf.kmeans.fit import kmeans_plus_plus
from scae_tf.kmeans.fit import l2_normalize
from scae_tf.kmeans.fit import METRICS
from scae_tf.kmeans.matching import contingency_matrix
from scae_tf.kmeans.matching import hungarian_mapping
from scae_tf.kmeans.matching import rematched_accuracy
from scae_tf.kmeans.provenance import check_fitted_on
from scae_tf.kmeans.provenance import checkpoint_digest
from scae_tf.kmeans.provenance import fitted_on
from scae_tf.kmeans.provenance import KMeansMismatchError
from scae_tf.kmeans.report import evaluate_kmeans
from scae_tf.kmeans.report import format_results
from scae_tf.kmeans.report import seed_spread
