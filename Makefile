# The two commands of the README: `make demo` (install + generate an animation) and `make test`.
PY ?= python3
PIP := $(PY) -m pip
DEMO := outputs/demo

.PHONY: install demo test test-slow bench

install:
	$(PIP) install -q torch==2.13.0            # the CPU wheel; must come before anything that depends on torch
	$(PIP) install -q -e ".[test]"

demo: install
	$(PY) scripts/make_random_model.py $(DEMO)/model
	$(PY) -m animatediff generate "a red circle bouncing on a blue striped background" \
		--model $(DEMO)/model/base --motion-module $(DEMO)/model/motion_module.safetensors \
		--frames 16 --width 64 --height 64 --steps 8 --seed 42 --out $(DEMO)/demo.gif

test: install
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/bench_unet_step.py
