# Copyright 2026 twinbrain_ros maintainers. Licensed under the Apache License, Version 2.0.
#
#   make demo    set up (if needed); the bundled TwinBrain checkpoint drives the MuJoCo SO-101 over
#                ROS 2 (sim + policy + controller nodes) inside a loopback-only netns; one-line summary
#   make demo-train  rebuild that checkpoint: record expert demos over ROS, convert, train (CPU, ~2.5 h)
#   make test    set up (if needed) and run every test, ROS tests isolated the same way
#   make setup   build .venv: ROS 2 Kilted wheels, torch CPU, pinned deps, generated messages
#   make lint    ruff
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
export MUJOCO_GL := egl
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
PYTEST_ARGS ?= -q

.PHONY: setup test demo demo-train lint bench clean

setup:
	@tools/setup.sh

test: setup
	@tools/isolated.sh $(PY) -m pytest test $(PYTEST_ARGS)

lint: setup
	@$(VENV)/bin/ruff check twinbrain_ros test launch tools

DEMO_ARGS ?=
demo: setup
	@tools/isolated.sh $(PY) -m twinbrain_ros.cli demo $(DEMO_ARGS)

demo-train: setup
	@tools/demo_train.sh

bench: setup
	@tools/isolated.sh $(PY) -m twinbrain_ros.cli bench ros

clean:
	rm -rf build install log
