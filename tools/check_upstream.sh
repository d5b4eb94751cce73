#!/usr/bin/env bash
# Runs the tests that lean on python-socketio, python-engineio and aiohttp internals (touched only in
# chatsvc/realtime/server.py, engine.py and websocket.py; see docs/architecture.md) against the newest
# releases of those three, in a scratch virtualenv, overriding the pins in setup.cfg. What to do when it
# fails: docs/performance.md, "When `make check-upstream` fails".
#
#   tools/check_upstream.sh                       # the newest releases
#   UPSTREAM="python-engineio==4.16.0" tools/check_upstream.sh   # a given candidate (pip requirement specs)
#
# Settings (environment): PYTHON (interpreter for the virtualenv, default python3), UPSTREAM (what to
# install over the pins, default the three packages' newest releases), CHECK_UPSTREAM_VENV (default
# build/check-upstream, ignored by git and removed by `make clean`).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${CHECK_UPSTREAM_VENV:-build/check-upstream}"
UPSTREAM="${UPSTREAM:-python-socketio python-engineio aiohttp}"
TESTS=(
    tests/test_upstream_contract.py
    tests/test_websocket_transport.py
    tests/test_socket_events.py
    tests/test_delivery.py
    tests/test_redis_cluster.py
    tests/test_groups.py
)
LIBRARIES="python-socketio python-engineio aiohttp"

versions() {
    "$VENV/bin/python" - $LIBRARIES <<'EOF'
import sys
from importlib.metadata import version

print(", ".join(f"{name} {version(name)}" for name in sys.argv[1:]))
EOF
}

# A fresh environment each time, so nothing of an earlier run (or of .venv) is tested by mistake.
rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
if ! { "$VENV/bin/python" -m pip install --quiet --upgrade pip &&
    "$VENV/bin/python" -m pip install --quiet -e '.[test,postgres]'; } >"$VENV/install.log" 2>&1; then
    cat "$VENV/install.log"
    echo "check-upstream: could not install chatsvc with its test and postgres extras"
    exit 1
fi
echo "check-upstream: pinned (setup.cfg): $(versions)"

# Over the pins. pip then reports that chatsvc's pins are not met: that is the point of this check.
# shellcheck disable=SC2086  # UPSTREAM is a list of requirement specs
if ! "$VENV/bin/python" -m pip install --quiet --upgrade $UPSTREAM >"$VENV/upstream-install.log" 2>&1; then
    cat "$VENV/upstream-install.log"
    echo "check-upstream: could not install $UPSTREAM"
    exit 1
fi
sed 's/^/    pip: /' "$VENV/upstream-install.log"
tested="$(versions)"
echo "check-upstream: testing:        $tested"

status=0
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "${TESTS[@]}" || status=$?
if [ "$status" -eq 0 ]; then
    echo "check-upstream: PASSED with $tested"
else
    echo "check-upstream: FAILED with $tested; see docs/performance.md, \"When \`make check-upstream\` fails\""
fi
exit "$status"
