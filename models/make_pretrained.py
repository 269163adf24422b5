"""Rebuild the files shipped in ``models/pretrained/`` and ``models/data/``.

    python -m models.make_pretrained            # ~3.5 minutes on 2 CPU cores

Trains LeNet-5 on the Fashion-MNIST training set with the recipe below (Adam, 15 epochs),
copies its state dict and ONNX export to ``models/pretrained/lenet5_fmnist.{pt,onnx}``,
writes ``lenet5_fmnist.json`` (accuracy on the full 10000-image test set, recipe,
normalisation), and draws the 300-image demo subset of the test set with a fixed seed into
``models/data/fmnist_test_subset.npz``. The recipe was fixed before the run, not tuned on the
test set beyond choosing it once.
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from models import data as datasets
from models.demo import DATA_DIR, DEMO_IMAGES, PRETRAINED_DIR

#: The recipe of the shipped model.
RECIPE = {"model": "lenet5", "epochs": 15, "lr": 2e-3, "lr_decay": 0.85, "batch_size": 64,
          "seed": 0}
#: Seed and size of the shipped test subset.
SUBSET_SEED, SUBSET_SIZE = 20240601, 300
NAME = "lenet5_fmnist"


def make_subset(folder: Path | None, out: Path) -> np.ndarray:
    """Draw ``SUBSET_SIZE`` test images (sorted indices) with ``SUBSET_SEED``; save as uint8."""
    folder = datasets.FASHION_MNIST_DIR if folder is None else folder
    images, labels = (datasets.read_idx(datasets._idx_file(folder, stem))
                      for stem in datasets._idx_stems("t10k"))
    index = np.sort(np.random.default_rng(SUBSET_SEED).choice(len(images), SUBSET_SIZE,
                                                               replace=False))
    np.savez_compressed(out, x=images[index], y=labels[index], index=index.astype(np.int32))
    return index


def main(argv: list[str] | None = None) -> int:
    """Train, export and write the shipped files; return 0."""
    ap = argparse.ArgumentParser(prog="python -m models.make_pretrained", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=None,
                    help=f"Fashion-MNIST IDX folder (default {datasets.FASHION_MNIST_DIR})")
    ap.add_argument("--work", type=Path, default=Path("xbarsim-out/make_pretrained"),
                    help="folder for checkpoints (resumable)")
    ap.add_argument("--out", type=Path, default=PRETRAINED_DIR, help="where the model goes")
    ap.add_argument("--subset-out", type=Path, default=DEMO_IMAGES, help="demo image file")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)

    from models.onnx_export import run_onnxruntime
    from models.train import train

    data = "fashion-mnist" if args.data_dir is None else args.data_dir
    r = RECIPE
    acc = train(r["model"], data, r["epochs"], r["lr"], r["batch_size"], r["seed"], args.work,
                progress=not args.quiet, lr_decay=r["lr_decay"])
    record = json.loads((args.work / "lenet5.json").read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    for ext in ("pt", "onnx"):
        shutil.copyfile(args.work / f"lenet5.{ext}", args.out / f"{NAME}.{ext}")

    args.subset_out.parent.mkdir(parents=True, exist_ok=True)
    make_subset(args.data_dir, args.subset_out)
    x, y = datasets.load_npz(args.subset_out)
    logits = np.concatenate([run_onnxruntime(args.out / f"{NAME}.onnx", x[i:i + 1])
                             for i in range(len(x))])
    subset_acc = float((logits.argmax(1) == y).mean())

    info = {
        "name": NAME, "model": r["model"], "model_kwargs": record["model_kwargs"],
        "data": "Fashion-MNIST (Zalando Research, MIT licence): 60000 train / 10000 test",
        "test_accuracy": acc, "test_examples": record["test_examples"],
        "subset_accuracy": subset_acc, "subset_file": str(args.subset_out.name),
        "subset_seed": SUBSET_SEED, "subset_size": SUBSET_SIZE,
        "epochs": r["epochs"], "seed": r["seed"], "lr": r["lr"], "lr_decay": r["lr_decay"],
        "batch_size": r["batch_size"], "optimizer": "Adam",
        "normalisation": datasets.NORMALISATION,
        "onnx": {"opset": record["onnx_opset"], "input": "input", "input_shape": [1, 1, 28, 28],
                 "output": "logits"},
        "train_seconds": record["train_seconds"], "torch_version": record["torch_version"],
        "history": record["history"],
        "command": "python -m models.make_pretrained",
    }
    (args.out / f"{NAME}.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"{NAME}: test accuracy {acc:.4f} (10000 images), subset accuracy "
          f"{subset_acc:.4f} ({SUBSET_SIZE} images); files in {args.out} and {DATA_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
