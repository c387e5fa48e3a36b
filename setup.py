"""Install jaxpost: `pip install -e .` for the library, `pip install -e '.[test]'` for the test suite."""

import setuptools

INSTALL_REQUIRES = [
    "jax>=0.10,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12,<0.13",
    "chex>=0.1.90",
    "transformers>=5.0,<6",
    "tensorflow-datasets>=4.9.9",
    "array-record>=0.8",
    "importlib_resources>=6",
    "safetensors>=0.6",
    "tokenizers>=0.22",
    "tqdm>=4.66",
    "ml_collections>=1.1",
    "numpy>=2.0",
    "pyarrow>=18",
    "datasets>=4",
    "math-verify>=0.8",
    "matplotlib>=3.9",
    "tensorboardX>=2.6",
    "jinja2>=3.1",  # chat templates (transformers imports it lazily)
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-xdist>=3.6",
    "torch==2.13.0",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
]

setuptools.setup(
    name="jaxpost",
    version="0.1.0",
    description="A JAX research framework for post-training language models: SFT, GRPO, Prefix-RFT, DMS.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["jaxpost", "jaxpost.*", "experiments", "experiments.*"]),
    package_data={"jaxpost": ["assets/*/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "tpu-aot": ["libtpu==0.0.42.*"]},
    entry_points={"console_scripts": ["jaxpost=jaxpost.cli:main"]},
)
