# Every target that needs the virtualenv depends on `install`, so a fresh
# clone needs nothing but `make run` or `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install run demo test bench bench-quick bench-cluster bench-files soak lint fmt clean check-upstream image image-test

install: $(STAMP)

# PYTHONWARNINGS: setuptools reports every editable install with a boxed "Editable installation"
# notice that reads like an error; it is informational only, so that one message is silenced.
$(STAMP): setup.cfg pyproject.toml
	@echo "Installing chatsvc with its test and dev tools into $(VENV) (a minute or two on a fresh clone)..."
	@$(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --upgrade pip
	@PYTHONWARNINGS='ignore:Editable installation' $(PY) -m pip install --quiet -e '.[test,dev,postgres,s3]'
	@touch $(STAMP)
	@echo "Installed: $(VENV)/bin/chatsvc, pytest, ruff and mypy."

run: install
	$(PY) -m chatsvc serve

# Serve with demo users alice, bob and carol (added if missing); prints the URL and password.
demo: install
	$(PY) -m chatsvc demo

# The suite runs on up to four processes (pytest-xdist): each starts its own servers on free ports.
test: install
	$(PY) -m pytest -q -rs -n auto --maxprocesses 4

# Every workload at full scale against chatsvc, the python-socketio baseline and the Node peer, with chatsvc on
# PostgreSQL beside chatsvc on SQLite for A-D, H and R (skipped without initdb); then A, C, D and I again under
# the official socket.io-client (shorter windows; skipped without node); then workload A against 1 instance and
# against 2 instances behind Redis with short windows, on SQLite and then on PostgreSQL (skipped if redis-server or
# PostgreSQL is missing); then uploads and downloads of a 5 MiB file (bench.files). About 20 minutes (2 more the
# first time: npm installs the Node packages). JSON reports go to bench-results/.
bench: install
	$(PY) -m bench
	$(PY) -m bench --client sio-js --only A,C,D,I --duration 8 --warmup 2 --idle-sockets 5000 --idle-seconds 10 \
		--no-postgres --skip-without-node
	$(PY) -m bench --cluster 2 --only A --duration 5 --warmup 1 --skip-without-redis
	$(PY) -m bench --cluster 2 --engine postgres --only A --duration 5 --warmup 1 --skip-without-redis \
		--skip-without-postgres
	$(PY) -m bench.files

# Uploads and downloads of a 5 MiB file, and the server's RSS while 20 uploads run at once (bench/README.md).
bench-files: install
	$(PY) -m bench.files

# Workload A against 1 instance and against 2 instances sharing rooms through Redis (needs redis-server), the
# instances sharing an SQLite file, then one PostgreSQL database (skipped without PostgreSQL).
bench-cluster: install
	$(PY) -m bench --cluster 2 --only A
	$(PY) -m bench --cluster 2 --engine postgres --only A --skip-without-postgres

bench-quick: install
	$(PY) -m bench --quick

# 2,000 sockets in 200 rooms held for 60 s while 20 send; checks delivery, errors and RSS (bench/README.md).
soak: install
	$(PY) -m bench.soak

# The tests that lean on python-socketio/engineio and aiohttp internals, against the newest releases of the
# three in a scratch virtualenv (build/check-upstream); docs/performance.md says what to do when it fails.
check-upstream:
	PYTHON=$(PYTHON) tools/check_upstream.sh

# The container image chatsvc:latest, with podman or docker, whichever is here: chatsvc's wheel built from the
# checkout and its dependencies' wheels, installed on python:3.11-slim-bookworm, or where that cannot be pulled on
# a base made from Debian's python3 (needs mmdebstrap; made once). docs/deploy.md, "As a container".
image: install
	$(PY) -m tools.container image

# Runs that image: chat over HTTP and Socket.IO from the host, history across a restart, non-root, read-only
# root file system, stop within 10 s, and deploy/compose.yaml's single profile (podman-compose or docker compose).
image-test: image
	CHATSVC_TEST_IMAGE=chatsvc:latest CHATSVC_CONTAINER_TESTS=required $(PY) -m pytest -q -s tests/test_container.py

lint: install
	$(VENV)/bin/ruff check chatsvc tests bench tools
	$(VENV)/bin/ruff format --check chatsvc tests tools
	$(VENV)/bin/mypy chatsvc tools

fmt: install
	$(VENV)/bin/ruff format chatsvc tests tools
	$(VENV)/bin/ruff check --fix chatsvc tests tools

clean:
	rm -rf $(VENV) build *.egg-info
