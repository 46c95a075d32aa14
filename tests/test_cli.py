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
