# The two Quick start commands live here: `make run` and `make test`.
# Both create the virtualenv on first use (tools/bootstrap.sh) and reuse it afterwards.

VENV  := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml tools/bootstrap.sh | sha256sum | cut -c1-16)

.PHONY: run test lint clean

run: $(STAMP)
	$(VENV)/bin/underbridge reproduce --quick --out out

test: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
	$(VENV)/bin/pytest -n 2 -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests

$(STAMP): pyproject.toml tools/bootstrap.sh
	sh tools/bootstrap.sh $(VENV)
	touch $@

clean:
	rm -rf $(VENV) .underbridge-cache
