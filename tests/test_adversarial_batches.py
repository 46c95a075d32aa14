"""defenses/adversarial_batches.py: what a defence adds to the training
loop's outputs (the loop itself is tested in test_training_loop.py, the
batches' attack in test_defenses.py)."""

from defenses.adversarial_batches import AdversarialFields


def test_adversarial_fields_show_the_phase_share_and_log_every_attack():
  fields = AdversarialFields()
  steps = [dict(adversarial=1., attack_success_rate=0.5),
           dict(adversarial=0., attack_success_rate=0.),
           dict(adversarial=1., attack_success_rate=0.25),
           dict(adversarial=0., attack_success_rate=0.)]
  shown = [fields.postfix(m) for m in steps]
  assert shown == [dict(adv='1.00', hit='0.50'), dict(adv='0.50'),
                   dict(adv='0.67', hit='0.25'), dict(adv='0.50')]
  assert [fields.always_log(m) for m in steps] == [True, False, True, False]
