#!/usr/bin/env bash
# `make test`: start the broker unless one is running, create the topics, run every test tier
# against it, print the broker log's tail on failure, and stop the broker if this script started it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
BROKER="$PY deploy/kafka/broker.py"

# the monitor's page is tested in a real headless Chromium (tests/integration/test_monitor.py), never skipped:
# install Debian's when missing and we can (root with apt-get); otherwise that test fails and says why
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "installing chromium (apt-get) for the monitor page test"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null \
            || echo "warning: apt-get install chromium failed; tests/integration/test_monitor.py will fail" >&2
    else
        echo "warning: no chromium and not root with apt-get; tests/integration/test_monitor.py will fail" >&2
    fi
fi

started=0
$BROKER status >/dev/null 2>&1 || started=1
if ! boot=$($BROKER up | tail -n 1); then
    echo "error: the Kafka broker did not start; integration tests cannot run" >&2
    $BROKER logs -n 80 >&2
    exit 1
fi
stop() { if [ "$started" = 1 ]; then $BROKER down; fi; }
trap stop EXIT
export PRICING_KAFKA_BOOTSTRAP="$boot"
echo "broker: $boot (started here: $started)"

$PY -m streams.topics || exit 1
$PY -m pytest "$@"
rc=$?
if [ "$rc" -ne 0 ]; then
    echo "--- tests failed (exit $rc); tail of the broker log:" >&2
    $BROKER logs -n 60 >&2
fi
exit "$rc"
