# The README's two commands: `make run` and `make test`. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned: here it resolves to the local CPU wheel, on a CUDA server to the CUDA build.
TORCH := torch==2.13.0

.PHONY: install system-deps run status stop test test-fast bench image install-system uninstall-system clean

$(STAMP): setup.cfg pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]' "$(TORCH)"
	@touch $@

install: $(STAMP)

# Debian packages the tests need (logrotate, chromium for the UI test). Idempotent;
# needs root and apt-get, which CI machines have.
system-deps:
	@bash ops/system-deps.sh

run: install
	@bash ops/run-local.sh

# The `make run` instance (./run, or GLMTTS_RUN_DIR). status: supervisorctl status +
# /healthz; non-zero unless healthy (`bash ops/run-local.sh status` itself: 0 healthy,
# 1 running but not healthy, 3 not running). stop: supervisord and both programs,
# cleanly, by its pid file; nothing running is fine.
status:
	@bash ops/run-local.sh status

stop:
	@bash ops/run-local.sh stop

test: install system-deps
	$(PY) -m pytest -rs

test-fast: install
	$(PY) -m pytest -rs -m "not system and not browser and not integration"

# Figures, not pass/fail: every bench prints its figures and writes its own section of
# docs/figures.md (bench/figures.py; the others are kept). A bench that fails keeps its
# previous section, marked not re-measured, and `make bench` exits 1 after the rest.
# BENCH_NOTE="..." is added to each section's machine line (e.g. a loaded shared VM).
# Not in the loop: gpu_validate.py (a GPU), glmtts_coldstart.py (a GLM-TTS checkout).
BENCHES := engine service batch drain watchdog recovery probe_contract prometheus_alert
FIGURES ?= docs/figures.md
bench: install
	@failed=""; for b in $(BENCHES); do echo "== bench/$$b.py"; \
	  $(PY) bench/$$b.py --figures $(FIGURES) || { rc=$$?; failed="$$failed $$b"; \
	    $(PY) bench/figures.py stale $$b --figures $(FIGURES) --reason "bench/$$b.py exited $$rc in make bench"; }; \
	done; test -z "$$failed" || { echo "make bench: failed:$$failed (their sections kept, marked)"; exit 1; }

# `make image` (VARIANT=cuda for the GLM-TTS one): ops/container/Dockerfile with any docker;
# build arguments: ops/container/README.md.
VARIANT ?= embedded
image:
	docker build -f ops/container/Dockerfile --build-arg VARIANT=$(VARIANT) -t glmtts:$(VARIANT) .

# `sudo make install-system`: user, dirs, config, systemd units, logrotate, watchdog timer
# (glmtts-system install; DRY_RUN=1 prints the plan). Then `systemctl enable --now glmtts`.
install-system: install
	$(VENV)/bin/glmtts-system install $(if $(DRY_RUN),--dry-run) $(INSTALL_ARGS)

uninstall-system:
	$(VENV)/bin/glmtts-system uninstall $(if $(DRY_RUN),--dry-run) $(INSTALL_ARGS)

clean:
	rm -rf $(VENV) run build *.egg-info
