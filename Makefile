# The two commands of the README: `make test` and `make demo`. Both build .venv first if needed.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dearli-env-stamp
# Tests and the demo never touch the network (some OpenCLIP tags download by plain URL).
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TORCH_HOME=$(CURDIR)/.cache/torch
# Data, when a different copy is wanted: DEARLI_SHARED_DATA=/path/to/shared/data make test
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: env test demo clean-env

env: $(STAMP)

$(STAMP): constraints.txt setup.py tools/setup_env.sh tools/install_detectron2.py
	bash tools/setup_env.sh

test: env
	$(OFFLINE) $(PY) -m pytest $(PYTEST_ARGS)

demo: env
	$(OFFLINE) $(PY) tools/ssl_benchmark.py --preset demo $(DEMO_ARGS)

clean-env:
	rm -rf $(VENV)
