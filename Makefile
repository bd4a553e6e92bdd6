# Everything installs itself into .venv on first use: a fresh machine needs only Python 3.11, pip and make.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
CONFIG ?= config_failover.yaml
#: compose's Envoy sends its traces to the Jaeger service; nothing else from the shell's OTEL_* reaches a shipped file.
COMPOSE_OTLP := http://jaeger:4318
RENDER_ENV := env -u OTEL_EXPORTER_OTLP_ENDPOINT -u OTEL_EXPORTER_OTLP_TRACES_ENDPOINT -u OTEL_EXPORTER_OTLP_PROTOCOL -u OTEL_EXPORTER_OTLP_TRACES_PROTOCOL -u OTEL_SERVICE_NAME -u OTEL_TRACES_SAMPLER_ARG

.PHONY: install run lint test unit e2e e2e-smoke e2e-claude-code image-test bench bench-ab bench-config bench-instructions bench-reload bench-bodies bench-bodies-floor bench-find-model bench-streams bench-telemetry soak envoy-config check clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,fast,envoy]'
	# xds-protos vendors an old copy of OpenTelemetry's protos at the same paths (no `scope_spans`); whichever
	# package pip installs last wins. The tests' OTLP receiver needs the current ones: install them last.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps -c constraints.txt opentelemetry-proto
	touch $(STAMP)

install: $(STAMP)

## The gateway on config_failover.yaml, with mock providers (primary answers 429, secondary echoes; gpt-4o answers 429, claude answers in Anthropic's API).
run: $(STAMP)
	$(BIN)/extproc up $(CONFIG) --mock-providers

lint: $(STAMP)
	$(BIN)/ruff check extproc tests bench
	$(BIN)/mypy

## The whole hermetic suite: lint, unit tests, then end-to-end tests through real Envoy.
test: lint
	$(BIN)/python -m pytest

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

e2e: $(STAMP)
	$(BIN)/python -m pytest tests/e2e

## Opt-in: the full stack against real providers (OPENAI_API_KEY, ANTHROPIC_API_KEY, AWS credentials, Vertex AI credentials; each test skipped, saying why, without its own).
e2e-smoke: $(STAMP)
	$(BIN)/python -m pytest -m real_provider -rs tests/e2e/test_real_provider.py

## Opt-in: Claude Code's CLI (npm, pinned) as the client, offline against mock providers: a tool round trip per provider API.
e2e-claude-code: $(STAMP)
	$(BIN)/python -m pytest -m claude_code -p no:cacheprovider tests/e2e/test_claude_code.py

## The image built with podman (on a debootstrapped Debian base) and run: check, up --mock-providers, the compose topology (CI runs it after `make test`; installs podman, runc and debootstrap with apt-get when missing).
image-test: $(STAMP)
	$(BIN)/python -m pytest -m image -p no:cacheprovider tests/image

## Envoy alone vs the gateway, side by side (prints a table; installs wrk if missing).
bench: $(STAMP)
	$(BIN)/python bench/run.py

## This code against an earlier revision in the same run (REV=<commit>): c=1 and c=64, beside Envoy alone and the floor.
bench-ab: $(STAMP)
	$(BIN)/python bench/ab.py $(REV)

## What a config's size costs (10 to 5,000 providers): rendered lines, ready time, Envoy and sidecar RSS, a one-provider reload, beside Envoy alone with as many clusters.
bench-config: $(STAMP)
	$(BIN)/python bench/config.py $(if $(SIZES),--sizes $(SIZES))

## Instructions per request (valgrind's callgrind) of Envoy and the sidecar, beside Envoy alone and the floor: a measure that does not drift with the machine.
bench-instructions: $(STAMP)
	$(BIN)/python bench/instructions.py $(if $(BARE),--bare-model)

## Time from a config file write to the first request routed by it.
bench-reload: $(STAMP)
	$(BIN)/python bench/reload.py

## What token accounting and tracing cost: the gateway with each on and off, same run.
bench-telemetry: $(STAMP)
	$(BIN)/python bench/telemetry.py

## Small-request latency with and without 10 MiB bodies posted alongside.
bench-bodies: $(STAMP)
	$(BIN)/python bench/bodies.py

## The floor of large bodies through any Python ext_proc: Envoy alone vs a bare ext_proc reading them.
bench-bodies-floor: $(STAMP)
	$(BIN)/python bench/bodies_floor.py

## What Envoy's model finding (JSON check + Lua scan) costs its worker thread, by body size.
bench-find-model: $(STAMP)
	$(BIN)/python bench/find_model.py

## Many long streams at once (100 new a second for 10 s, 20 chunks over 10 s each): Envoy alone vs the gateway.
bench-streams: $(STAMP)
	$(BIN)/python bench/streams.py

## 5 minutes at 32 connections, every request failing over from a provider that closes its connection after each 429: the sidecar's RSS must stay flat (within 5 MB after the first minute).
soak: $(STAMP)
	$(BIN)/python bench/soak.py

check: $(STAMP)
	$(BIN)/extproc check $(CONFIG)

## envoy/envoy.yaml (compose: admin on the shared volume) and the Kubernetes copy (admin on the pod's loopback): Envoy beside `extproc serve` sharing /run/extproc.
envoy-config: $(STAMP)
	$(RENDER_ENV) OTEL_EXPORTER_OTLP_ENDPOINT=$(COMPOSE_OTLP) $(BIN)/extproc render config_failover.yaml --sidecar unix:/run/extproc/sidecar.sock --xds-dir /run/extproc/xds --admin-address unix:/run/extproc/envoy-admin.sock -o envoy/envoy.yaml
	$(RENDER_ENV) OPENAI_API_KEY=$${OPENAI_API_KEY:-render-only} $(BIN)/extproc render deploy/kubernetes/config.yaml --sidecar unix:/run/extproc/sidecar.sock --xds-dir /run/extproc/xds -o deploy/kubernetes/envoy.yaml

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
