"""scae_tf.cli: how the scripts turn a library call into an exit status."""

import pytest

from scae_tf import checkpoints
from scae_tf import cli


def _raise(error):
  def call():
    raise error
  return call


@pytest.mark.parametrize('error', [
    cli.UsageError('--compare needs --plot_only.'),
    FileNotFoundError('no checkpoint found in directory x.'),
    checkpoints.CheckpointMismatchError('Checkpoint x does not match.'),
    ValueError('unknown dataset=1.'),
])
def test_expected_errors_are_one_error_line_and_status_1(capsys, error):
  assert cli.run(['script'], _raise(error)) == 1
  captured = capsys.readouterr()
  assert captured.err == f'error: {error}\n' and captured.out == ''


def test_a_failed_training_is_one_error_line_and_status_2(capsys):
  from scae_tf import training  # pylint: disable=g-import-not-at-top
  error = training.NonFiniteLossError('Non-finite loss at step 2; the last '
                                      'finite checkpoint is ckpt-1.')
  assert cli.run(['script'], _raise(error)) == cli.TRAINING_FAILED == 2
  assert capsys.readouterr().err == f'error: {error}\n'


def test_status_of_the_call_and_bugs_pass_through(capsys):
  assert cli.run(['script'], lambda: None) == 0
  assert cli.run(['script'], lambda: 2) == 2
  with pytest.raises(KeyError):
    cli.run(['script'], _raise(KeyError('a bug')))
  assert capsys.readouterr().err == ''


def test_positional_arguments_are_a_mistyped_flag(capsys):
  called = []
  assert cli.run(['script', 'mnist'], lambda: called.append(1)) == 1
  assert not called
  assert capsys.readouterr().err == "error: unexpected arguments ['mnist']\n"


def test_argument_checks():
  cli.check_choice('kmeans', 'both', ('cosine', 'both'))
  with pytest.raises(cli.UsageError,
                     match="unknown kmeans='l1'; expected one of cosine, both"):
    cli.check_choice('kmeans', 'l1', ('cosine', 'both'))
  cli.check_positive('k', None, optional=True)
  for value in (0, None):
    with pytest.raises(cli.UsageError, match=f'k must be positive, got '
                       f'{value}'):
      cli.check_positive('k', value)


def test_ctrl_c_is_one_line_and_status_130(capsys):
  def call():
    raise KeyboardInterrupt('at step 7, saved in run/ckpt/ckpt-7.')

  assert cli.run(['script'], call) == 130
  assert capsys.readouterr().err == (
      'interrupted: at step 7, saved in run/ckpt/ckpt-7.\n')
  assert cli.run(['script'], _raise(KeyboardInterrupt())) == 130
  assert capsys.readouterr().err == 'interrupted\n'


def test_scripts_quiet_the_python_log_of_tensorflow_unless_asked(
    monkeypatch):
  import logging  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(flags.FLAGS['verbosity'], 'present', 0)
  absl_logging.set_verbosity(absl_logging.INFO)
  cli.run(['script'], lambda: None)
  assert absl_logging.get_verbosity() == absl_logging.WARNING
  assert logging.getLogger('tensorflow').level == logging.WARNING
  # --verbosity=0 on the command line: the user's choice stays.
  monkeypatch.setattr(flags.FLAGS['verbosity'], 'present', 1)
  absl_logging.set_verbosity(absl_logging.INFO)
  cli.run(['script'], lambda: None)
  assert absl_logging.get_verbosity() == absl_logging.INFO
  absl_logging.set_verbosity(absl_logging.WARNING)


def test_the_resume_command_is_the_command_without_overwrite():
  python = cli.resume_command(['x'])[:-len(' x')]
  assert cli.resume_command(
      ['run/attack.py', '--checkpoint=a b', '--overwrite', '--seed=1',
       '--overwrite=true', '-overwrite', '--nooverwrite']) == (
           f"{python} run/attack.py '--checkpoint=a b' --seed=1 "
           '--nooverwrite')
