"""Shared test helpers: where the original-code fixtures and the data live.

`SCAE_REFERENCE_DIR` (default `../shared/reference` beside the repo) holds the
outputs of the ORIGINAL TF1 SCAE; `SCAE_DATA_DIR` (default `../shared/data`)
the MNIST IDX files. Tests that need them skip, with the path in the reason,
when they are absent; `.ci/run` fails if they exist but were skipped.
"""

import os
import pathlib

import pytest

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

REPO = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(os.environ.get(
    'SCAE_REFERENCE_DIR', REPO.parent / 'shared' / 'reference'))
DATA_DIR = pathlib.Path(os.environ.get(
    'SCAE_DATA_DIR', REPO.parent / 'shared' / 'data'))


def reference_path(*parts):
  """Path inside the reference fixtures, or skip the test if absent."""
  path = REFERENCE_DIR.joinpath(*parts)
  is_ckpt_prefix = path.with_name(path.name + '.index').exists()
  if not (path.exists() or is_ckpt_prefix):
    pytest.skip(f'original-code fixture {path} not found; set '
                'SCAE_REFERENCE_DIR to the shared/reference folder')
  return path


def data_path(*parts):
  path = DATA_DIR.joinpath(*parts)
  if not path.exists():
    pytest.skip(f'data file {path} not found; set SCAE_DATA_DIR to a folder '
                'with the MNIST IDX files')
  return path
