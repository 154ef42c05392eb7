#!/usr/bin/env bash
# Build (or repair) the project environment in .venv. Called by `make env`.
# - A .venv without the stamp file is treated as broken and rebuilt from scratch.
# - Every step says its name when it fails; the stamp is written last, so an interrupted or
#   failed run is never mistaken for a complete environment.
# - The machine's local wheel folder (PIP_FIND_LINKS, pip.conf) is ignored on purpose: it holds a
#   CPU-only torch build that PyPI's torchvision cannot load its operators with.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.dearli-env-stamp"
PYTHON=${PYTHON:-python3}

step() { CURRENT_STEP="$1"; echo "[make env] $1"; }
trap 'echo "[make env] FAILED in step: ${CURRENT_STEP:-start} (re-run make env to repair)" >&2' ERR

# Isolate pip from the machine's config and local wheel folder; use the package registry.
export PIP_CONFIG_FILE=/dev/null PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1
unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL PIP_NO_INDEX || true

if [ -d "$VENV" ] && [ ! -f "$STAMP" ]; then
  step "remove incomplete $VENV (no stamp)"
  rm -rf "$VENV"
fi
rm -f "$STAMP"
if [ ! -x "$VENV/bin/python" ]; then
  step "create virtualenv with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

step "pin build tools (pip, setuptools, wheel)"
$PIP install -q -c constraints.txt pip setuptools wheel

step "install pinned dependencies and dearli (editable)"
$PIP install -q -c constraints.txt -e ".[test]"

step "install detectron2 0.6 (pure Python, patched, hash-checked)"
"$VENV/bin/python" tools/install_detectron2.py

step "verify: import dearli, detectron2; pip check"
"$VENV/bin/python" -c "import dearli, detectron2, torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
$PIP check

date -u +%Y-%m-%dT%H:%M:%SZ > "$STAMP"
echo "[make env] done"
