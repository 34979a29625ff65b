"""Helpers shared by the training tests (test_train.py, test_negatives.py, test_train_ddp.py,
test_streamed_negatives.py)."""
import textwrap

import numpy as np
from PIL import Image

# A training run in a child process, SIGKILLed right after it writes the checkpoint of
# iteration 4: argv[1] is its YAML config, argv[2] the torch thread count.
KILLED_RUN = textwrap.dedent("""
    import os, signal, sys, torch, yaml
    torch.set_num_threads(int(sys.argv[2]))
    from csd_fast.train import TrainConfig, train

    def die_after_4(iteration, path):  # as sudden as a power cut: no cleanup runs
        if iteration == 4:
            os.kill(os.getpid(), signal.SIGKILL)

    train(TrainConfig(**yaml.safe_load(open(sys.argv[1]))), on_checkpoint=die_after_4)
""")


def noise_folder(folder, count, seed):
    """A plain HR folder of random 32x32 images."""
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder
