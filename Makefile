# Strata: the two commands of the README are `make up` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: up down status test test-unit test-integration test-e2e deps lint typecheck proto clean

$(BIN)/strata: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

## Run the archive: the embedded default stack on loopback (Kafka KRaft, chDB, hot tier on disk,
## cold tier on Ceph RGW when Ceph is installed: 'make deps' installs it).
up: $(BIN)/strata
	-@$(BIN)/strata viewer install  # the OHIF web viewer (npm, cached); optional
	$(BIN)/strata up

down:
	$(BIN)/strata down

status:
	$(BIN)/strata status

## Test prerequisites no pip package provides: DCMTK (the real DICOM peer), Java + Maven (Kafka,
## MirrorMaker 2, the test identity provider), HAProxy (the HA tests), Orthanc + its GDCM plugin,
## Ceph 16.2 mon/osd/radosgw (the cold tier's object store; 'make up' uses it when installed).
deps:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	test -x /usr/bin/chromium || missing="$$missing chromium"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	command -v java >/dev/null || missing="$$missing default-jre-headless"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v ceph-mon >/dev/null || missing="$$missing ceph-mon"; \
	command -v ceph-osd >/dev/null || missing="$$missing ceph-osd"; \
	command -v radosgw >/dev/null || missing="$$missing radosgw"; \
	command -v ceph >/dev/null || missing="$$missing ceph-common"; \
	command -v monmaptool >/dev/null || missing="$$missing ceph-base"; \
	test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -f /usr/share/orthanc/plugins/libOrthancGdcm.so || missing="$$missing orthanc-gdcm"; \
	command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	test -x /usr/sbin/rsyslogd || missing="$$missing rsyslog"; \
	ls /usr/lib/*/rsyslog/lmnsd_gtls.so >/dev/null 2>&1 || missing="$$missing rsyslog-gnutls"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "please install:$$missing (Debian: sudo apt-get install$$missing)"; exit 1; fi; \
	fi
	@test -d tests/e2e/viewer/node_modules/playwright-core || npm ci --silent --prefix tests/e2e/viewer

## Run the tests: unit, integration (real Kafka + chDB) and e2e (real DCMTK peers).
test: deps $(BIN)/strata
	$(BIN)/pytest -ra

test-unit: $(BIN)/strata
	$(BIN)/pytest -ra tests/unit

test-integration: deps $(BIN)/strata
	$(BIN)/pytest -ra tests/integration

test-e2e: deps $(BIN)/strata
	$(BIN)/pytest -ra tests/e2e

lint: $(BIN)/strata
	$(BIN)/ruff check .

typecheck: $(BIN)/strata
	$(BIN)/mypy -p strata

## Regenerate protobuf code (committed; tests/unit/test_proto_current.py checks it is current).
proto: $(BIN)/strata
	$(BIN)/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. strata/proto/strata/v1/*.proto

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache *.egg-info
