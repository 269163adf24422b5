"""Shared setup for the models tests: 2 threads (the CI machine has 2 cores)."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

try:
    import torch
except ImportError:  # data tests still run; torch tests skip themselves
    torch = None
else:
    torch.set_num_threads(2)

# Modules that import torch at the top are not collected where torch is missing.
collect_ignore = [] if torch else ["test_models_zoo.py", "test_models_train.py"]
