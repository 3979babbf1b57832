"""Install the LaVIT-style unified discrete-token multimodal model.

``pip install -e .`` gives the library and the ``lavit`` command; extras add the training and
evaluation tools (``.[dev]``, ``.[eval]``), what converting LaVIT-7B-v2 needs (``.[convert]``) and
the optional CUDA attention backend (``.[xformers]``).
"""

from setuptools import find_packages, setup

# torch 2.14.1 / torchvision 0.29.1 install from the build machines' local disk; the ranges
# admit other releases that pair correctly (torchvision must match torch's minor version).
INSTALL_REQUIRES = [
    "torch>=2.4,<2.15",
    "torchvision>=0.19,<0.30",
    "transformers>=5.0,<6",
    "diffusers>=0.32,<1",
    "timm>=1.0,<2",
    "einops>=0.8,<1",
    "vector-quantize-pytorch>=1.20,<2",
    "omegaconf>=2.3,<3",
    "safetensors>=0.4",
    "tokenizers>=0.20",
    "pillow>=10",
    "numpy>=1.24",
    "tqdm>=4.60",
    "webdataset>=1.0,<2",  # tar shards (img2dataset's layout) for training at scale
    "braceexpand>=0.1",  # shard patterns such as data/{00000..00099}.tar
]

EXTRAS_REQUIRE = {
    # scikit-learn: its bundled photographs and digits are the real images the tests and the
    # real-data recipe use (nothing can be downloaded at run time).
    "dev": [
        "pytest>=8",
        "pytest-timeout>=2.3",
        "ruff>=0.6",
        "nbclient>=0.10",
        "nbformat>=5.10",
        "ipykernel>=6",
        "scikit-learn>=1.3",
        "sentencepiece>=0.2",  # the tests convert a sentencepiece tokenizer as LaVIT's is
        "protobuf>=4",
    ],
    # Converting LaVIT-7B-v2 (lavit convert lavit): its tokenizer.model is a sentencepiece model.
    "convert": ["sentencepiece>=0.2", "protobuf>=4"],
    "eval": ["pycocoevalcap>=1.2", "torchmetrics>=1.4", "torch-fidelity>=0.3", "scipy>=1.10"],
    "xformers": ["xformers>=0.0.28"],
}

setup(
    name="lavit",
    version="0.1.0",
    description="Unified discrete-token multimodal foundation model (LaVIT / VARGPT style)",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["lavit", "lavit.*", "tokenizer", "tokenizer.*", "detokenizer", "detokenizer.*"]),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={"console_scripts": ["lavit=lavit.cli:main"]},
    license="Apache-2.0",
)
