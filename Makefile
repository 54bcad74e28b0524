# Two commands on a fresh Debian/Ubuntu machine with Python >= 3.11:
#   make run    create .venv, install, start the node on the shipped config.yaml (embedded queue)
#   make test   the same install, plus the system tools the tests use, then the whole suite
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Where torch comes from. The pin in constraints.txt keeps every later install on 2.13.0;
# set e.g. TORCH_INDEX=--index-url=https://download.pytorch.org/whl/cpu on a machine without
# a local CPU wheel, so that pip does not fetch the CUDA build.
TORCH_INDEX ?=
APT_PACKAGES := dcmtk orthanc redis-server chromium chromium-driver
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install run test system-deps bench eval-real clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH_INDEX) torch==2.13.0 -c constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	touch $@

run: install
	$(BIN)/dicom-node --config config.yaml serve

system-deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v Orthanc >/dev/null || [ -x /usr/sbin/Orthanc ] || missing="$$missing orthanc"; \
	command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# apt-get starts no service in a container; the tests start their own Orthanc and Redis.

test: install system-deps
	$(BIN)/python -m pytest

bench: install system-deps
	$(BIN)/python bench/receive.py --json bench/results/receive-processes.json
	$(BIN)/python bench/receive_memory.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/e2e.py --json bench/results/e2e.json
	$(BIN)/python bench/batch.py --json bench/results/batch-latest.json

# Real-CT figures of the shipped weights (folder layout of REALDATA described in docs/model-card.md).
REALDATA ?= ../shared/realdata
eval-real: install
	$(BIN)/python -m segmenter evaluate --dataset none --real-root $(REALDATA) --threads 2 --out bench/results/eval_real.json

clean:
	rm -rf $(VENV) var .pytest_cache
