"""xbarsim: compiler, cycle-level simulator and ADMM compressor for ReRAM crossbar accelerators."""
from setuptools import find_packages, setup

setup(
    name="xbarsim",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    packages=find_packages(include=["simulator*", "compiler*", "compressor*", "models*"]),
    package_data={
        "simulator": ["presets/*.yaml"],
        "compressor": ["recipes/*.yaml"],
        "models": ["data/*", "pretrained/*"],
    },
    install_requires=[
        "numpy>=1.26",
        "numba>=0.59",
        "networkx>=3.0",
        "onnx>=1.15",
        "onnxruntime>=1.17",
        "PyYAML>=6.0",
        "tqdm>=4.60",
        "pandas>=2.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        # The CPU wheel of torch 2.13.0 lies on this disk; a range admitting a newer
        # release would pull a multi-GB CUDA build.
        # scikit-learn: the digits data set training and compressing are tried on
        "torch": ["torch>=2.2,<2.14", "scikit-learn>=1.3"],
        "scale": ["dask[distributed]>=2024.1", "pyarrow>=14"],
        "ray": ["ray[default]>=2.9"],
        "test": ["pytest>=7", "scikit-learn>=1.3", "ruff>=0.4"],
        "all": [
            "torch>=2.2,<2.14",
            "dask[distributed]>=2024.1",
            "pyarrow>=14",
            "ray[default]>=2.9",
            "scikit-learn>=1.3",
            "pytest>=7",
            "ruff>=0.4",
        ],
    },
    entry_points={"console_scripts": ["xbarsim=simulator.cli:main"]},
)
