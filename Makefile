# scirepo: `make up` brings the platform up, `make test` tests it. `make help` lists the rest.
# The Makefile stays thin: the logic lives in the `scirepo` CLI (scirepo/).
SHELL := /bin/bash
SITE ?= site.yml
VENV ?= .venv
PY := $(VENV)/bin/python
SCIREPO := $(VENV)/bin/scirepo
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help up down clean deploy test lint unit images locks config-docs ci-local \
	bench

help: ## List the targets
	@grep -hE '^[a-zA-Z_%/-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  make %-14s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml scripts/bootstrap ci/local/package-lock.json
	./scripts/bootstrap $(VENV)
	@touch $@

$(SITE):
	cp site.example.yml $(SITE)
	@echo "Created $(SITE) from site.example.yml; edit it to describe your site."

up: $(STAMP) $(SITE) ## Build, start and deploy the local repository host
	$(SCIREPO) config check $(SITE)
	$(SCIREPO) local up --site $(SITE)

down: $(STAMP) $(SITE) ## Stop the local host, keeping all its data
	$(SCIREPO) local down --site $(SITE)

clean: $(STAMP) $(SITE) ## Remove the local host and its data (the local CA is kept)
	$(SCIREPO) local clean --site $(SITE)

deploy: $(STAMP) $(SITE) ## Deploy to real hosts: make deploy INVENTORY=path/to/inventory.yml
	@test -n "$(INVENTORY)" || { echo "usage: make deploy INVENTORY=path" >&2; exit 2; }
	$(SCIREPO) config check $(SITE)
	$(SCIREPO) deploy --site $(SITE) --inventory $(INVENTORY)

images: $(STAMP) $(SITE) ## Build the images and push them (PUSH=host:port, default images.registry)
	$(SCIREPO) images build --site $(SITE) $(if $(PUSH),--push-registry $(PUSH))

locks: $(STAMP) ## Recompile the images' lock files from their requirements.in
	$(SCIREPO) images lock

ci-local: $(STAMP) $(SITE) ## Run the CI image jobs your changes select (gitlab-ci-local; JOBS=...)
	$(PY) -m scirepo.ci --site $(SITE) $(JOBS)

config-docs: $(STAMP) ## Regenerate docs/config.md from the schema
	$(SCIREPO) config docs

lint: $(STAMP) ## ruff, yamllint, shellcheck, hadolint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/yamllint -s .
	$(VENV)/bin/shellcheck scripts/bootstrap .ci/run images/base/scirepo-start \
	  ansible/roles/hub/files/scirepo-lab-static
	$(VENV)/bin/hadolint images/*/Dockerfile images/stack.Dockerfile hub/Dockerfile local/host/Dockerfile

bench: $(STAMP) $(SITE) ## Benchmark the local host against stock JupyterHub (BENCH_ARGS="--n 5,10 ...")
	$(PY) bench/run.py --site $(SITE) $(BENCH_ARGS)

unit: $(STAMP) ## Unit tests only (no host needed)
	$(PY) -m pytest tests/unit

test: $(STAMP) $(SITE) ## Lint, then every test; brings the local host up first if needed
	$(MAKE) lint
	$(PY) -m pytest tests --site $(SITE)
