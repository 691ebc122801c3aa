"""Entry points: ``cli`` (one command per stage plus the whole pipeline, each usable with `ray job
submit`), ``stages`` (each stage as a function: config and run layout in, result out) and ``launch``
(what the commands share).

Importing this package sets the process defaults every job needs before Ray, transformers or
DeepSpeed are imported: a local Ray cluster stays on 127.0.0.1, no usage stats, CPU DeepSpeed
when no GPU is present, and no tokenizer thread pools inside Ray workers.
"""

import glob
import os

if not os.environ.get("RAY_ADDRESS"):
    # Read by Ray at import time: a local single-node cluster binds to loopback only.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the driver's own default (any /dev/nvidiaN: a container may expose only some GPUs); every role that
# builds a DeepSpeed engine sets its own from its device (actors.training.engines.use_deepspeed_on)
os.environ.setdefault("DS_ACCELERATOR", "cuda" if glob.glob("/dev/nvidia[0-9]*") else "cpu")
