"""Continuous-time generative models (score SDEs, rectified flow) on JAX/Flax."""
from setuptools import find_packages, setup

setup(
    name="score-flow-jax",
    version="0.1.0",
    description="Score-based SDEs and rectified flow on JAX/Flax: training, "
                "predictor-corrector and diffrax samplers, exact likelihoods.",
    python_requires=">=3.10",
    packages=find_packages(include=["common*", "modes*", "sde_lib*", "models*", "solvers*",
                                    "configs*",
                                    "training*", "data*", "evaluation*", "bench*",
                                    "notebooks*"]),
    py_modules=["main"],
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax>=0.2.4",
        "orbax-checkpoint>=0.11",
        "diffrax>=0.7",
        "equinox>=0.12",
        "jaxtyping>=0.2.20",  # shape annotations of public signatures (also a diffrax dependency)
        "ml_collections>=0.1.1",
        "absl-py>=1.0",
        "numpy>=1.26",
        "Pillow>=10.0",
        "matplotlib>=3.7",
        "tqdm>=4.60",
        "tensorboardX>=2.6",  # TensorBoard event files without TensorFlow
        "scikit-learn>=1.3",  # bundled 8x8 digits: built-in real data, no download
        "grain>=0.2.10",  # input pipeline for data larger than memory (imported lazily)
        "array-record>=0.8",  # ArrayRecord shards read by that pipeline
        "etils[epath]>=1.5",  # every workdir path (gs:// and local); also an orbax dependency
    ],
    extras_require={
        "dev": ["pytest>=7", "pytest-xdist>=3", "scipy>=1.10", "chex>=0.1.86",
                "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6", "ruff>=0.5",
                # jax's file lock for the suite's shared compilation cache (tests/conftest.py)
                "filelock>=3.8"],
        "data": [],
        "notebooks": ["jupyter", "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6"],
    },
)
