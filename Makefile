# Real-time personalized pricing: the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
BROKER := $(PY) deploy/kafka/broker.py
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: help venv demo demo-homogeneous robustness ceiling kafka-up kafka-down kafka-status kafka-logs topics settings test test-fast test-unit lint bench clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

venv: $(STAMP)  ## create .venv and install the package with the train and dev extras
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	@rm -f $(VENV)/.installed-* && touch $@

demo: venv  ## the whole loop on a simulated market: broker, history, training, export, worker, closed-loop A/B, report
	@bash deploy/demo.sh

demo-homogeneous: venv  ## the demo in a market where all users are alike (personalization must do no harm)
	@bash deploy/demo.sh --homogeneous

robustness: venv  ## the robustness suite: train, export and loop on 15 markets + 4 of a second generator, judged against their truth (~45 min)
	$(PY) -m models.lab.robustness --keep-going --out var/robustness

ceiling: venv  ## per robustness row, what the features carry: a learner handed the optimal prices in training (~7 min, no training)
	$(PY) -m models.lab.ceiling --out var/ceiling

BROKERS ?= 1
kafka-up: venv  ## start the local Kafka broker (idempotent; BROKERS=3 for a 3-node cluster), create the topics
	@boot=$$($(BROKER) up --brokers $(BROKERS) | tail -n 1) && env PRICING_KAFKA_BOOTSTRAP=$$boot \
	  $$( [ $(BROKERS) -ge 3 ] && echo PRICING_REPLICATION_FACTOR=3 PRICING_MIN_INSYNC_REPLICAS=2 ) \
	  $(PY) -m streams.topics >&2 && echo $$boot

kafka-down: venv  ## stop the broker that kafka-up started
	@$(BROKER) down

kafka-status: venv  ## is the broker running?
	@$(BROKER) status

kafka-logs: venv  ## tail of the broker log
	@$(BROKER) logs

topics: venv  ## create the project's topics on PRICING_KAFKA_BOOTSTRAP (idempotent)
	@$(PY) -m streams.topics

settings: venv  ## print the effective settings, secrets masked
	@$(PY) -m streams.settings

test: venv  ## everything: start the broker, create topics, unit + agent + integration tests, stop the broker
	@bash deploy/run-tests.sh

test-fast: venv  ## the fast lane (< 60 s): unit and agent tests and doctests, no broker, no model training
	$(PY) -m pytest -q -m "not slow and not integration" tests/unit tests/agents streams models export

test-unit: venv  ## unit and agent tests and doctests, model training included (no broker)
	$(PY) -m pytest tests/unit tests/agents streams models export

lint:  venv ## ruff, mypy (strict on the worker's modules) and the dependency rule (README, Architecture)
	$(PY) -m ruff check streams models export tests bench
	$(PY) -m mypy streams models export
	$(PY) -m pytest -q -p no:cacheprovider tests/unit/test_architecture.py

clean:  ## remove local state (broker data, models, reports); keeps the venv and the jar cache
	-@$(BROKER) down 2>/dev/null
	rm -rf var reports
