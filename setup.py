"""cvrl_tf: Spatiotemporal Contrastive Video Representation Learning in TensorFlow/Keras 3."""
import setuptools

setuptools.setup(
    name="cvrl_tf",
    version="0.1.0",
    description="CVRL (Qian et al., CVPR 2021) for tf.distribute: CPU, GPU, multi-host, Cloud TPU.",
    packages=setuptools.find_packages(include=["cvrl_tf", "cvrl_tf.*"]) + ["cvrl_tf.gin"],
    # The gin configs (gin/ in the repository) ship inside the package as cvrl_tf/gin, so a
    # non-editable install still resolves --gin_file=experiments/... and their includes.
    package_dir={"cvrl_tf.gin": "gin"},
    package_data={"cvrl_tf.gin": ["*/*.gin"]},
    python_requires=">=3.10,<3.13",
    install_requires=[
        "tensorflow~=2.20.0",
        "keras>=3.10,<4",
        "tf-models-official~=2.20.0",  # orbit, and the reference code used in tests/benchmarks
        "tensorflow-datasets>=4.9,<5",
        "gin-config>=0.5,<0.6",
        "absl-py>=1.4",
        "numpy>=1.26",
        "av>=12",  # PyAV: video decoding for the converter, ships its own ffmpeg
        "tqdm>=4.60",
        "matplotlib>=3.7",  # cvrl_tf/viz/plots.py (the demo's embedding map), imported lazily
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3"]},
)
