# priorlab: the whole set-up of a fresh machine is `make run` (serve) and `make test` (tests).
# Every target installs what it needs first: venv + pinned wheels, Debian packages, generated
# protobuf code, exported models.

PYTHON_SYS ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
# Debian packages: redis-server (Restore job bus), libb64-0d (perf_analyzer from tritonclient 2.44).
APT_PACKAGES := redis-server libb64-0d chromium
PROTOS := $(wildcard protos/priorlab/v1/*.proto)
MODEL_INPUTS := $(wildcard colorizers/*.py colorizers/checkpoints/* export/*.py) contract/__init__.py

.PHONY: run test check bench chaos data deps apt protos models perf-analyzer clean

run: deps protos models
	$(VENV)/bin/priorlab stack

# pytest exits 5 when it ran no test; make fails on it like on any other failure.
test: deps protos models
	$(PY) -m pytest -q

check: deps protos
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy contract colorizers export service bench tests priorlab

deps: $(VENV)/.installed apt

$(VENV)/.installed: requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install --quiet --no-deps -r requirements.lock
	# The `priorlab` command (pyproject's [project.scripts]), editable: it runs this checkout.
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

protos: service/pb/priorlab/v1/.generated

service/pb/priorlab/v1/.generated: $(PROTOS) $(VENV)/.installed
	rm -rf service/pb/priorlab
	$(PY) -m grpc_tools.protoc -I protos --python_out=service/pb --grpc_python_out=service/pb \
	  --pyi_out=service/pb $(PROTOS)
	# protoc imports siblings as `priorlab.v1`; make them package-relative to service.pb.
	sed -i 's/^from priorlab\.v1 import/from service.pb.priorlab.v1 import/' service/pb/priorlab/v1/*.py service/pb/priorlab/v1/*.pyi
	touch service/pb/priorlab/__init__.py service/pb/priorlab/v1/__init__.py $@

# WEIGHTS=authors: the authors' released ECCV16 and SIGGRAPH17 checkpoints, fetched once from their
# registered URLs into .cache/weights/ (SHA-256 checked; export/fetch.py); WEIGHTS=project: ours.
# Without WEIGHTS the last export's choice stands (ours on a fresh checkout, recorded in .exported) and
# nothing touches the network: a re-export then takes the authors' files from the cache only.
EXPORTED_FROM = $(or $(shell cat model_repository/.exported 2>/dev/null),project)
WEIGHTS_FROM = $(or $(WEIGHTS),$(EXPORTED_FROM))

models: model_repository/.exported

ifneq ($(WEIGHTS_FROM),$(EXPORTED_FROM))
.PHONY: model_repository/.exported
endif

model_repository/.exported: $(MODEL_INPUTS) $(VENV)/.installed
	$(VENV)/bin/priorlab export --repository model_repository --weights-from $(WEIGHTS_FROM) $(if $(WEIGHTS),,--offline)
	echo $(WEIGHTS_FROM) > $@

# Training photos into .cache/colorize-data (never committed); see colorizers/MODEL_CARD.md.
# The project's package sources always; plus a folder of photos if named (TRAIN_DATA=DIR), never
# trained on what EVAL_DATA="DIR ..." holds (default: eval/ and dip/ beside TRAIN_DATA).
data: deps
	$(VENV)/bin/priorlab data $(if $(TRAIN_DATA),--train-folder "$(TRAIN_DATA)") $(foreach f,$(EVAL_DATA),--eval-folder "$(f)")

# perf_analyzer from the tritonclient 2.44 wheel (unpacked into .cache/, never pip-installed: it
# conflicts with pytriton's tritonclient pin) + libcudart from nvidia-cuda-runtime-cu12.
perf-analyzer: deps
	$(PY) -m bench.perf_analyzer --install

bench: deps protos models perf-analyzer
	$(VENV)/bin/priorlab bench

# Faults injected into a running stack (kill/hang Triton, a model stub, the worker, Redis): detect and
# recover times, jobs lost -> bench/results/chaos.{json,md}.
chaos: deps protos models
	$(VENV)/bin/priorlab chaos

clean:
	rm -rf service/pb/priorlab model_repository/*/[0-9]* model_repository/.exported .run
