# gradnoise: `make run` runs the default study, `make test` runs lint + type checks + tests.
# Both create (or reuse) .venv. torch is pinned to 2.13.0: see README ("Why torch==2.13.0").
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench peers clean

# constraints.txt holds torch==2.13.0 for every install: the test extra brings Lightning and
# transformers, whose newest releases would otherwise be free to pull another torch.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/gradnoise run

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy src/gradnoise/stats src/gradnoise/levy.py

test: lint
	$(BIN)/python -m pytest -q

# Peer tools, only for benchmarks and oracles. backpack-for-pytorch declares torchvision, which
# would pull a multi-GB CUDA torch: install it (and opacus, pyhessian) without dependencies.
peers: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt einops unfoldNd opt_einsum powerlaw
	$(BIN)/python -m pip install --quiet --no-deps backpack-for-pytorch opacus pyhessian

bench: peers
	for b in per_sample powerlaw stable spectra variance levy; do $(BIN)/python benchmarks/$$b.py || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
