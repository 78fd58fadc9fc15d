# The two commands of the README: `make demo` (install + generate an animation) and `make test`.
PY ?= python3
PIP := $(PY) -m pip
DEMO := outputs/demo

.PHONY: install browser demo demo-model reproduce long-video-report ui test test-slow bench

install:
	$(PIP) install -q torch==2.13.0            # the CPU wheel; must come before anything that depends on torch
	$(PIP) install -q -e ".[test,demo,ui]"    # demo: OpenCV + matplotlib for the demo world, eval and the report; ui: Gradio

demo: install  # the bundled demo model (src/animatediff/data/demo): no model flags needed
	$(PY) -m animatediff generate "a red circle bouncing on a blue striped background" --seed 42 --out $(DEMO)/demo.gif

demo-model: install  # retrain the bundled demo family v2 from nothing (stages measured at about 4.2 h on 2 CPU cores; resumable)
	$(PY) -m animatediff.demo.build

reproduce: install  # regenerate docs/reproduction.md on the bundled family (about an hour on 2 CPU cores)
	$(PY) -m animatediff.demo.report

long-video-report: install  # regenerate docs/long-video.md: 64-frame clips per long-video option (about 10 min on 2 CPU cores)
	$(PY) -m animatediff.demo.long_video

ui: install  # the web UI on http://127.0.0.1:7860 with the bundled demo model
	$(PY) -m animatediff ui

# The web UI's browser test drives the distribution's headless Chromium and its driver (Debian/Ubuntu packages,
# never a browser a tool downloads itself); without them (no apt, not root) that test is skipped with its reason.
browser:
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	else echo "note: chromium + chromium-driver not installed: the browser test will be skipped"; fi

test: install browser
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

bench: install
	$(PY) benchmarks/bench_unet_step.py --latent 16 32 64 --steps 2 --warmup 1 --large-steps 1 --e2e-steps 25 --e2e-steps-diffusers 2
