"""The training engine: one step and one loop for every method.

  step.py        `make_train_step(model, optimizer, loss_fn)`: a loss function
                 in, a compiled (optionally distributed) optimiser step out;
                 the SCAE objective is the default loss.
  loop.py        `train_loop`: resumable, checkpointed, with evaluators and
                 extra checkpointed state, set by one `LoopOptions`; a
                 method adds its own progress fields (`StepFields`).
  run_checkpoint.py  `RunCheckpoint`: a run's checkpoints, saved only when
                 finite, restored from the newest usable one.
  evaluators.py  per-epoch evaluations (probe accuracy, the k-means curve).
  run_dir.py     a training run's folder: its identity (`run.json`) and
                 length, its log, the logdir guard; on `scae_tf.run_folder`
                 (identity check, lock, overwrite, checkpoints).
  distribute.py  `tf.distribute` strategies by name.
"""

from scae_tf.run_folder import CHECKPOINT_DIR
from scae_tf.run_folder import FolderInUseError
from scae_tf.run_folder import lock_folder
from scae_tf.run_folder import newest_checkpoint_step
from scae_tf.training import distribute
from scae_tf.training.distribute import make_strategy
from scae_tf.training.distribute import STRATEGIES
from scae_tf.training.evaluators import KMeansCurve
from scae_tf.training.evaluators import probe_accuracy
from scae_tf.training.evaluators import ProbeAccuracy
from scae_tf.training.loop import LoopOptions
from scae_tf.training.loop import StepFields
from scae_tf.training.loop import train_loop
from scae_tf.training.loop import TrainingInterrupted
from scae_tf.training.run_checkpoint import NonFiniteLossError
from scae_tf.training.run_checkpoint import RunCheckpoint
from scae_tf.training.run_dir import check_logdir
from scae_tf.training.run_dir import JsonlLog
from scae_tf.training.run_dir import length_change
from scae_tf.training.run_dir import LOG_FILE
from scae_tf.training.run_dir import prepare_logdir
from scae_tf.training.run_dir import previous_settings
from scae_tf.training.run_dir import RUN_FILE
from scae_tf.training.run_dir import run_settings
from scae_tf.training.run_dir import RunMismatchError
from scae_tf.training.step import make_train_step
from scae_tf.training.step import METRICS
from scae_tf.training.step import scae_objective
from scae_tf.training.step import scae_terms
from scae_tf.training.step import StepContext
