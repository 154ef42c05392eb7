#!/usr/bin/env python
"""Install detectron2 0.6 as pure Python from the pinned PyPI sdist ``pb1-detectron2==0.6``.

detectron2 is not published as a wheel on PyPI. ``pb1-detectron2`` 0.6 is a byte-identical copy of
upstream v0.6 (only the distribution name differs) that ships no C++ sources. This script

1. does nothing if a working detectron2 is already importable (e.g. a user's own source build);
2. downloads the sdist with the environment's pinned pip and checks its sha256;
3. applies a small list of exact text patches (each must match the expected number of times,
   otherwise the script stops and names the patch) so that v0.6 works with current
   Pillow/NumPy/Python and installs without compiling anything;
4. installs the patched tree with ``pip install --no-build-isolation -c constraints.txt``.

Every failure names the step and the cause; a half-done install is never left looking complete
(the caller, tools/setup_env.sh, only writes its stamp after this script succeeds).
"""
import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile

SDIST_NAME = "pb1-detectron2"
SDIST_VERSION = "0.6"
SDIST_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
SRC_DIR = f"pb1-detectron2-{SDIST_VERSION}"

PLACEHOLDER_C = '''"""Placeholder for detectron2's compiled ops (installed by dearli's tools/install_detectron2.py).

dearli installs detectron2 as pure Python. The compiled ops (rotated boxes, deformable
convolution, ROIAlignRotated) are not needed by dearli and are not built.
"""


def __getattr__(name):
    raise RuntimeError(
        f"detectron2._C.{name} is not available: this detectron2 was installed as pure Python by "
        "dearli (tools/install_detectron2.py) without its compiled ops (rotated boxes, deformable "
        "convolution). Build detectron2 from source if you need them."
    )
'''

# The NumPy aliases removed in NumPy 1.24, with the builtin each one stood for.
NUMPY_ALIASES = {"np.int": "int", "np.float": "float", "np.bool": "bool", "np.str": "str"}
NUMPY_ALIAS_RE = re.compile(r"np\.(int|float|bool|str)\b(?![\d_])")
NUMPY_ALIAS_COUNT = 19

# (file, old text, new text, expected number of occurrences)
TEXT_PATCHES = [
    # Pillow 10 removed Image.LINEAR (it was an alias of BILINEAR).
    ("detectron2/data/transforms/transform.py", "interp=Image.LINEAR", "interp=Image.BILINEAR", 1),
    # pkg_resources is deprecated and absent from new setuptools; use importlib.resources.
    ("detectron2/model_zoo/model_zoo.py", "import pkg_resources\n", "import importlib.resources\n", 1),
    (
        "detectron2/model_zoo/model_zoo.py",
        'cfg_file = pkg_resources.resource_filename(\n        "detectron2.model_zoo", '
        "os.path.join(\"configs\", config_path)\n    )",
        'cfg_file = str(\n        importlib.resources.files("detectron2.model_zoo").joinpath('
        '"configs", config_path)\n    )',
        1,
    ),
    # The caffe2 exporter cannot be imported with current PyTorch; keep the rest of export usable.
    (
        "detectron2/export/__init__.py",
        "from .api import *\n",
        "try:\n    from .api import *  # needs caffe2, absent from current PyTorch\n"
        "except ImportError:\n    pass\n",
        1,
    ),
    # No C++/CUDA extension build: the sdist ships no csrc, and dearli needs none of the ops.
    ("setup.py", "    ext_modules=get_extensions(),\n", "    ext_modules=[],\n", 1),
    (
        "setup.py",
        '    cmdclass={"build_ext": torch.utils.cpp_extension.BuildExtension},\n',
        "",
        1,
    ),
    # Ship the model-zoo configs that are already inside the sdist's package tree.
    (
        "setup.py",
        '    package_data={"detectron2.model_zoo": get_model_zoo_configs()},\n',
        '    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},\n',
        1,
    ),
    # A stale formatter pin that conflicts with everything else; detectron2 never imports black.
    ("setup.py", '        "black==21.4b2",\n', "", 1),
]


class StepError(RuntimeError):
    def __init__(self, step, cause):
        super().__init__(f"[install_detectron2: {step}] {cause}")


def probe_detectron2():
    """Import detectron2 with the pieces dearli uses, in a subprocess; return the error or ''."""
    probe = (
        "import detectron2, detectron2.model_zoo, detectron2.engine, detectron2.evaluation;"
        "from detectron2.modeling import META_ARCH_REGISTRY;"
        "import detectron2.data.transforms.transform"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    return "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or ["unknown error"])[-1]


def download_sdist(workdir):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-build-isolation",
           "--no-binary", ":all:", f"{SDIST_NAME}=={SDIST_VERSION}", "-d", workdir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = os.path.join(workdir, f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz")
    if proc.returncode != 0 or not os.path.exists(path):
        raise StepError("download", f"pip could not download {SDIST_NAME}=={SDIST_VERSION} "
                        f"(is the package registry reachable?):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return path


def verify_sha256(path, expected=SDIST_SHA256):
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
    if digest != expected:
        raise StepError("verify", f"sha256 of {path} is {digest}, expected {expected}; refusing to install")


def patch_text(root, rel, old, new, count):
    path = os.path.join(root, rel)
    text = open(path, encoding="utf-8").read()
    found = text.count(old)
    if found != count:
        raise StepError("patch", f"{rel}: expected {count} occurrence(s) of {old!r}, found {found}")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text.replace(old, new))


def patch_numpy_aliases(root):
    total, edits = 0, {}
    for dirpath, _, files in os.walk(os.path.join(root, "detectron2")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                text = open(path, encoding="utf-8").read()
                new, n = NUMPY_ALIAS_RE.subn(lambda m: NUMPY_ALIASES[m.group(0)], text)
                if n:
                    total += n
                    edits[path] = new
    if total != NUMPY_ALIAS_COUNT:
        raise StepError("patch", f"expected {NUMPY_ALIAS_COUNT} removed NumPy aliases, found {total}")
    for path, text in edits.items():
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)


def apply_patches(root):
    for rel, old, new, count in TEXT_PATCHES:
        patch_text(root, rel, old, new, count)
    patch_numpy_aliases(root)
    placeholder = os.path.join(root, "detectron2", "_C.py")
    if os.path.exists(placeholder):
        raise StepError("patch", f"{placeholder} already exists; unexpected sdist content")
    with open(placeholder, "w", encoding="utf-8") as f:
        f.write(PLACEHOLDER_C)
    if not os.path.isdir(os.path.join(root, "detectron2", "model_zoo", "configs")):
        raise StepError("patch", "detectron2/model_zoo/configs missing from the sdist")


def install_tree(root, constraints):
    # Dependencies are resolved under the project's constraints file (exact pins), so installing
    # detectron2 can never change torch or numpy.
    cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", root]
    if constraints:
        cmd += ["-c", constraints]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise StepError("install", f"pip install of the patched tree failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sdist", help="use this local sdist instead of downloading it (hash still checked)")
    parser.add_argument("--force", action="store_true", help="install even if detectron2 already works")
    parser.add_argument("--constraints", default=os.path.join(os.path.dirname(__file__), "..", "constraints.txt"),
                        help="pip constraints file for detectron2's dependencies ('' for none)")
    args = parser.parse_args(argv)

    if not args.force and not probe_detectron2():
        print("[install_detectron2] a working detectron2 is already importable; nothing to do")
        return 0
    with tempfile.TemporaryDirectory(prefix="dearli-d2-") as workdir:
        sdist = args.sdist or download_sdist(workdir)
        verify_sha256(sdist)
        with tarfile.open(sdist) as tar:
            tar.extractall(workdir, filter="data")
        root = os.path.join(workdir, SRC_DIR)
        apply_patches(root)
        install_tree(root, args.constraints)
    error = probe_detectron2()
    if error:
        raise StepError("check", f"detectron2 was installed but does not import: {error}")
    print(f"[install_detectron2] installed patched {SDIST_NAME}=={SDIST_VERSION}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except StepError as e:
        print(e, file=sys.stderr)
        sys.exit(1)
