"""Helpers shared by the `run/` entry points."""

import sys


def extra_args_error(argv):
  """Prints an error and returns True when absl left positional arguments:
  a mistyped flag (e.g. `--dataset mnist` without `=`) lands there, and
  silently ignoring it would run with the default instead."""
  if len(argv) > 1:
    print(f'error: unexpected arguments {argv[1:]}', file=sys.stderr)
    return True
  return False
