"""The evasion attack on SCAE classifiers and its evaluation protocol.

  attacks.objectives   capsule subset S, capsule / perturbation losses, mask
  attacks.optimizers   TF1 Adam / TF1 RMSProp / signed-gradient steps
  attacks.classifiers  the attack targets PriK, PosK, PriL, PosL
  attacks.evasion      CapsuleAttack, AttackConfig, PRESETS
  attacks.protocol     the defence code's robustness protocol and reports
  attacks.registry     the attacks a run can name, and their contract
  attacks.run_spec     AttackRun: what an attack run asks for, checked
  attacks.pipeline     a checkpoint's attack, start to finish (run/attack.py)
  attacks.settings     checks and preset lookup shared by the attack configs
  attacks.margins      margin losses of the deployed classifiers (issue 13)
  attacks.pgd          PGD-L2 on those margins: fixed budget, minimal norm
  attacks.margin_cw    the paper's search with the margin as loss (C&W L2)
  attacks.worst_case   per-sample worst case over several attacks' L2

Defaults follow the fork's `attack_opt.py`; the paper's wording is an
option where the two differ:

  setting          default (fork)                    option (paper)
  mask             blurred clean image (use_mask)     use_mask=False
  subset S         above the batch's mean presence   subset='example' (4)
  capsule loss     0.5 sum_S f^2 (/ P^2 posterior)   capsule_loss='sum' (3)
  alpha in loss    batch-coupled (sum of alphas)     const_coupling='example'
  success          prediction != label               success='clean_prediction'

This package imports nothing at import time, so `attacks.protocol` (numpy
only) loads without TensorFlow.
"""
