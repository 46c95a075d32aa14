"""scae_tf.files: atomic writes."""

import json
import os

import numpy as np
import pytest

from scae_tf import files


def test_writers_round_trip_and_create_folders(tmp_path):
  folder = tmp_path / 'a' / 'b'
  assert files.write_text(str(folder / 't.md'), 'hi\n') == str(folder / 't.md')
  assert (folder / 't.md').read_text() == 'hi\n'
  files.write_json(folder / 'j.json', {'b': 1, 'a': [2]}, sort_keys=True)
  assert (folder / 'j.json').read_text() == json.dumps(
      {'a': [2], 'b': 1}, indent=1, sort_keys=True)
  files.save_npy(folder / 'x.cache', np.arange(3))  # no .npy appended
  np.testing.assert_array_equal(np.load(folder / 'x.cache'), np.arange(3))
  for compressed in (False, True):
    files.save_npz(folder / 'z.npz', dict(u=np.ones(2), v=np.str_('s')),
                   compressed=compressed)
    with np.load(folder / 'z.npz') as z:
      assert z.files == ['u', 'v'] and str(z['v']) == 's'
  assert sorted(os.listdir(folder)) == ['j.json', 't.md', 'x.cache', 'z.npz']


def test_failed_write_keeps_the_old_file_and_no_temporary(tmp_path):
  path = tmp_path / 'j.json'
  files.write_json(path, {'old': True})
  with pytest.raises(TypeError):
    files.write_json(path, {'new': object()})  # not JSON-able, half-written
  assert json.loads(path.read_text()) == {'old': True}
  assert os.listdir(tmp_path) == ['j.json']


def test_atomic_open_rejects_other_modes(tmp_path):
  with pytest.raises(ValueError, match="'a'"):
    with files.atomic_open(tmp_path / 'x', 'a'):
      pass


def test_leftover_temporaries_are_the_unfinished_writes(tmp_path):
  (tmp_path / 'done.json').write_text('{}')
  (tmp_path / 'other.tmp').write_text('')
  with files.atomic_open(tmp_path / 'a.json') as f:
    # What a kill at this point leaves behind.
    assert files.leftover_temporaries(tmp_path) == [f.name]
    assert files.leftover_temporaries(tmp_path, ('a.json',)) == [f.name]
    assert files.leftover_temporaries(tmp_path, ('b.json',)) == []
  assert files.leftover_temporaries(tmp_path) == []
  assert files.leftover_temporaries(tmp_path / 'missing') == []
