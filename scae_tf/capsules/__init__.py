"""The Stacked Capsule Autoencoder itself: one module per part of the paper.

  parts            part capsule encoder and template decoder (upstream
                   `capsules/primary.py`)
  objects          object capsule layer: votes, scales, presences
  set_transformer  the set transformer the object encoder runs on
  likelihoods      image mixture and capsule likelihood
  losses           sparsity losses, linear probes, the training objective
  warping          affine grid warps of the templates
  resampler        bilinear resampling (`tf.contrib.resampler` semantics;
                   its native kernel is `scae_tf/kernels`)
  neural, math_ops the building blocks with the original's parametrisation
  model            `SCAE`, which wires them together

Nothing is imported here, so that `import scae_tf.capsules` stays cheap.
The modules' old paths (`scae_tf.model`, `scae_tf.parts`, ...) are
aliases of these, registered in `scae_tf/__init__.py`.
"""
