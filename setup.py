#!/usr/bin/env python
"""dearli: DEARLi semi-supervised panoptic segmentation as a Detectron2 extension.

detectron2 itself is not on PyPI and is therefore not declared here; `make env` installs it
(tools/install_detectron2.py), and `import dearli` explains how when it is missing.
"""
from setuptools import find_packages, setup

setup(
    name="dearli",
    version="0.1.0",
    description="DEARLi: semi-supervised panoptic segmentation with CLIP and SAM, on Detectron2",
    python_requires=">=3.10",
    packages=find_packages(include=("dearli", "dearli.*")),
    package_data={"dearli": ["data/prompts/*.txt", "data/definitions/*.txt", "modeling/backbone/model_configs/*.json",
                            "weights/*.safetensors", "weights/*.json"]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "numpy<2",
        "scipy",
        "fvcore",
        "open_clip_torch>=2.24",
        "segment-anything",
        "pycocotools",
        "panopticapi-lite",
        "opencv-python-headless",
        "pillow",
        "tqdm",
        "psutil",
    ],
    extras_require={"test": ["pytest", "pytest-timeout"]},
)
