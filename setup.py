from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = {}
# Only the transformers releases CI (.ci/run) has passed on: 4.57.x, 5.23.x and 5.24.x. To allow a new release, run
# .ci/run with it (docs/compatibility.md says how) and widen this.
TESTED_TRANSFORMERS = "transformers>=4.57,<5.25," + ",".join(f"!=5.{minor}.*" for minor in range(23))
exec((HERE / "src" / "hybrid_vlm" / "version.py").read_text(), VERSION)

setup(
    name="hybrid_vlm",
    version=VERSION["__version__"],
    description="Hybrid Mamba/Transformer vision-language models as native Hugging Face transformers models",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"": "src"},
    packages=find_packages("src"),
    py_modules=["hybrid_vlm_launcher"],
    include_package_data=True,
    package_data={"hybrid_vlm": ["assets/*", "assets/**/*"]},
    install_requires=[
        "torch>=2.4",
        TESTED_TRANSFORMERS,
        "safetensors>=0.4",
        "huggingface_hub>=0.34",
        "pillow>=10",
        "av>=12",
        "numpy",
        "tqdm",
    ],
    extras_require={
        "train": ["trl>=1.0", "peft>=0.17", "accelerate>=1.0", "datasets>=3"],
        "kernels": ["mamba-ssm>=2.2", "causal-conv1d>=1.4", "flash-attn>=2.6"],
        "test": ["pytest>=8", "ruff>=0.6", "hypothesis>=6", "matplotlib>=3.7", "parameterized>=0.9"],
        "bench": ["matplotlib>=3.7"],
    },
    # The launcher refuses a mistyped model argument before importing torch, then runs hybrid_vlm.cli.main.
    entry_points={"console_scripts": ["hybrid-vlm=hybrid_vlm_launcher:main"]},
    classifiers=[
        "License :: OSI Approved :: Apache Software License",
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
