"""Data: the standard IDX files of MNIST and Fashion-MNIST, where to find
them, the preprocessing onto the SCAE canvas and resumable batch streams.

One module per job:

* `registry`: the datasets (`DatasetSpec`, `DATASETS`), their split files;
* `locate`: where the files are (`resolve_data_dir`: an explicit
  `data_dir`, `$SCAE_DATA_DIR`, `../shared/data/<dataset>` beside the
  repository, the Keras cache `~/.keras/datasets`, finally a download into
  that cache);
* `idx`: reading and checking the IDX files (`load_dataset`);
* `preprocessing`: onto the canvas (`pad_center`, `pad_shift`, `resize`);
* `cache`: the on-disk cache of resized splits (`load_resized`);
* `stream`: the batches training (`BatchStream`) and evaluation
  (`eval_batches`) read.

The names below are the public API, used as `data.BatchStream(...)`. They
are bound here once: to patch one (e.g. `SHARED_DATA_DIR` in a test), patch
it in the module that defines it.
"""

from scae_tf.data.cache import CACHE_DIR_ENV
from scae_tf.data.cache import default_cache_dir
from scae_tf.data.cache import load_resized
from scae_tf.data.idx import DataFileError
from scae_tf.data.idx import load_dataset
from scae_tf.data.idx import load_split
from scae_tf.data.idx import read_idx
from scae_tf.data.locate import DATA_DIR_ENV
from scae_tf.data.locate import REPO_ROOT
from scae_tf.data.locate import resolve_data_dir
from scae_tf.data.locate import SHARED_DATA_DIR
from scae_tf.data.preprocessing import draw_offsets
from scae_tf.data.preprocessing import MODES
from scae_tf.data.preprocessing import pad_center
from scae_tf.data.preprocessing import pad_shift
from scae_tf.data.preprocessing import place
from scae_tf.data.preprocessing import preprocess
from scae_tf.data.preprocessing import resize
from scae_tf.data.preprocessing import resize_uint8
from scae_tf.data.preprocessing import to_float
from scae_tf.data.registry import DATASETS
from scae_tf.data.registry import DatasetSpec
from scae_tf.data.registry import get_dataset_spec
from scae_tf.data.registry import IDX_FILES
from scae_tf.data.registry import SPLITS
from scae_tf.data.stream import BatchStream
from scae_tf.data.stream import eval_batches
