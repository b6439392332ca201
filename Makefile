# nnopt: `make help` lists the targets. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help install run test test-fast bench claims lint clean

help: ## Show the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP) ## Create .venv and install nnopt with its dev tools

run: $(STAMP) ## Train the default config (MLP on the shipped MNIST) and print the test accuracy
	$(BIN)/nnopt train

test: $(STAMP) ## Run the whole test suite (two pytest workers: the tests are small and single-threaded)
	$(BIN)/python -m pytest -q -n 2

test-fast: $(STAMP) ## Run the tests not marked slow
	$(BIN)/python -m pytest -q -n 2 -m "not slow"

bench: $(STAMP) ## Time nnopt's epoch against a plain PyTorch loop (ratios), compare over 1,000 runs, train's start-up (--help, --cfg job, a config error), a run's and a sweep job's fixed cost, a checkpoint at epoch 1/30/150, 1 thread against every core, Muon against AdamW, seeds vectorized against sequential
	$(BIN)/python -m benchmarks.epoch_overhead
	$(BIN)/python -m benchmarks.compare_1000
	$(BIN)/python -m benchmarks.cli_startup
	$(BIN)/python -m benchmarks.run_overhead
	$(BIN)/python -m benchmarks.checkpoint_cost
	$(BIN)/python -m benchmarks.threads
	$(BIN)/python -m benchmarks.threads --muon
	$(BIN)/python -m benchmarks.vectorized

claims: $(STAMP) ## Rerun the claims ledger (docs/results/claims.md): every claim's sweep (missing runs only), then compare's verdicts
	$(BIN)/python -m benchmarks.claims

lint: $(STAMP) ## ruff lint
	$(BIN)/ruff check nnopt_cli hydra_plugins tests benchmarks

clean: ## Remove the venv and caches (keeps outputs/)
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
