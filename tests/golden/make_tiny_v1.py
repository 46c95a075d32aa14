# Run once at commit f08a697 (before the config split) to write tests/golden/tiny_v1.
import os, shutil, json
import numpy as np, tensorflow as tf
from scae_tf import configs, data, training, checkpoints
from scae_tf.capsules.model import SCAE
from scae_tf.optim import TF1RMSProp
out = 'tests/golden/tiny_v1'  # then only the last checkpoint was kept
shutil.rmtree(out, ignore_errors=True)
tf.random.set_seed(0); np.random.seed(0)
config = configs.tiny_config()
model = SCAE(config)
opt = TF1RMSProp.for_config(model.trainable_variables, config, lr_decay=True, learning_rate=1e-3)
rng = np.random.RandomState(0)
imgs = (rng.rand(8, 14, 14) * 255).astype(np.uint8)
labels = rng.randint(0, 10, 8)
stream = data.BatchStream.from_arrays(imgs, labels, 4, 'pad_center', seed=0, canvas_size=20)
settings = training.run_settings(config, golden=True)
training.prepare_logdir(out, settings)
training.train_loop(model, opt, stream, out, total_steps=3, noise=True, save_every=1000, progress=False, seed=0)
shutil.rmtree(os.path.join(out, 'tb'))
x = stream.batch(0)[0]
o = model.forward(tf.constant(x), tf.constant(stream.batch(0)[1]), full=False)
np.savez(os.path.join(out, 'expected.npz'), images=x, labels=stream.batch(0)[1],
  caps_presence_prob=o.caps_presence_prob.numpy(), posterior_mixing_probs=o.posterior_mixing_probs.numpy(),
  rec_ll=o.rec_ll.numpy(), loss=model.loss(o).numpy(), step=opt.step.numpy(),
  ms0=opt.ms[0].numpy(), mom0=opt.mom[0].numpy())
print(sorted(os.listdir(out)), sorted(os.listdir(out+'/ckpt')))
