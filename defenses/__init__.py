"""Adversarial-training defences of SCAE (paper section 5): AT, AD, HAT, NTAT.

  run_spec.py             `DefenceRun`: a run's settings, checked before
                          TensorFlow loads
  trainer.py              `train_defense(run)`: the phases on the training
                          engine
  objectives.py           the losses as training-engine loss functions:
                          Eq. 7 (AT, Algorithm 2) and Eq. 8 (AD, Algorithm 3)
  adversarial_batches.py  every (k+1)-th batch replaced by the attack's
                          adversarial examples (Algorithm 5), generated inside
                          the compiled step against the model being trained

Where the authors' code differs from the paper's text, the code is the
default and the paper's form an option (docs/code_vs_paper.md, defences).
"""
