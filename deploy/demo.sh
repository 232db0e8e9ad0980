#!/usr/bin/env bash
# `make demo`: the whole system end to end on this machine, in about 9 to 12 minutes (2 cores).
#
#   broker -> fresh topics -> simulated history -> train -> export ONNX bundle -> pricing worker
#   -> closed-loop market (simulated users see the worker's prices and buy by the true demand)
#   -> A/B evaluation table and report (reports/<run>/report.md)
#
# Three arms, a third of the users each: control (base price), uniform (one learnt price per item,
# the bundle's uniform.json) and treatment (personalized); the report shows what personalization adds
# beyond repricing (treatment over uniform) and the welfare of each arm.
#
# Usage: deploy/demo.sh [--homogeneous]
#   --homogeneous      a market with no heterogeneity (all users alike): personalization cannot
#                      help there, so treatment should earn >= 98 % of the best uniform price.
# Environment (optional): DEMO_DAYS (simulated days, default 4), DEMO_DURATION (wall seconds for
#   them, default 240), DEMO_WARM_DAYS (simulated days of history replayed into the worker first,
#   as if it had been running, default 7: the longest feature window, so that no decayed counter
#   starts underfilled compared with training; 0 starts every user cold), DEMO_USERS (first N users
#   of the market, default all 8,000), DEMO_KEEP_TOPICS=1 (keep the run's topics for `pricing-evaluate --kafka`),
#   DEMO_TREATMENT_SHARE / DEMO_UNIFORM_SHARE (default 0.3334 / 0.3333; DEMO_UNIFORM_SHARE=0 runs two arms).
# It stops what it started: the worker always, the broker only if it was not already running.
set -euo pipefail
cd "$(dirname "$0")/.."

HOMOGENEOUS=0
for arg in "$@"; do
  case "$arg" in
    --homogeneous) HOMOGENEOUS=1 ;;
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done

PY=.venv/bin/python
DAYS=${DEMO_DAYS:-4}
DURATION=${DEMO_DURATION:-240}
WARM_DAYS=${DEMO_WARM_DAYS:-7}
RUN="demo-$(date +%Y%m%d-%H%M%S)"
VARIANT=default
TRAIN_ARGS=()
if [[ $HOMOGENEOUS == 1 ]]; then
  VARIANT=homogeneous
  RUN="$RUN-homogeneous"
  TRAIN_ARGS=(--heterogeneity 0)
fi
VAR="var/demo/$VARIANT"
REPORT="reports/$RUN"
T0=$(date +%s)
STEP_T0=$T0
STARTED_BROKER=0
WORKER_PID=""
MARKET_PID=""

step() {  # step N "what": a progress line with the time since the start
  local now; now=$(date +%s)
  printf '\n[%s/7] %s   (t+%ss)\n' "$1" "$2" "$((now - T0))"
  STEP_T0=$now
}

cleanup() {
  local rc=$?
  if [[ -n $MARKET_PID ]] && kill -0 "$MARKET_PID" 2>/dev/null; then
    kill -TERM "$MARKET_PID" 2>/dev/null || true
    wait "$MARKET_PID" 2>/dev/null || true
  fi
  if [[ -n $WORKER_PID ]] && kill -0 "$WORKER_PID" 2>/dev/null; then
    echo "[demo] stopping the worker (pid $WORKER_PID)"
    kill -TERM "$WORKER_PID" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$WORKER_PID" 2>/dev/null || break; sleep 0.5; done
    kill -KILL "$WORKER_PID" 2>/dev/null || true
  fi
  if [[ ${BOOTSTRAP:-} != "" && ${DEMO_KEEP_TOPICS:-0} != 1 ]]; then
    "$PY" - "$BOOTSTRAP" "$RUN" <<'EOF' 2>/dev/null || true
import sys
from kafka import KafkaAdminClient
admin = KafkaAdminClient(bootstrap_servers=sys.argv[1], client_id="demo-cleanup")
mine = [t for t in admin.list_topics() if t.startswith(sys.argv[2])]
if mine:
    admin.delete_topics(mine)
    print(f"[demo] deleted the run's {len(mine)} topics")
admin.close()
EOF
  fi
  if [[ $STARTED_BROKER == 1 ]]; then
    echo "[demo] stopping the broker this demo started"
    "$PY" deploy/kafka/broker.py down || true
  fi
  echo "[demo] total $(( $(date +%s) - T0 )) s; exit $rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step 1 "bootstrap: virtual environment"
if [[ ! -x $PY ]]; then
  make venv
fi
"$PY" -c "import streams, models, export" && echo "venv ok: $("$PY" --version)"

step 2 "Kafka broker"
if "$PY" deploy/kafka/broker.py status >/dev/null 2>&1; then
  echo "broker already running: it stays up afterwards"
else
  STARTED_BROKER=1
fi
BOOTSTRAP=$("$PY" deploy/kafka/broker.py up | tail -n 1)
echo "bootstrap $BOOTSTRAP"

step 3 "fresh topics for run $RUN"
export PRICING_KAFKA_BOOTSTRAP=$BOOTSTRAP
export PRICING_APP_ID="$RUN" PRICING_TOPIC_CLICKSTREAM="$RUN-clickstream" PRICING_TOPIC_CATALOG="$RUN-catalog"
export PRICING_TOPIC_PRICES="$RUN-prices" PRICING_TOPIC_DEAD_LETTER="$RUN-clickstream-dlq"
export PRICING_MODEL_DIR="$VAR/models" PRICING_DATA_DIR="$VAR/worker" PRICING_USER_HASH_KEY="demo-$RUN"
export PRICING_EXPERIMENT_SALT="$RUN"
export PRICING_TREATMENT_SHARE=${DEMO_TREATMENT_SHARE:-0.3334} PRICING_UNIFORM_SHARE=${DEMO_UNIFORM_SHARE:-0.3333}
rm -rf "$VAR"
mkdir -p "$VAR"
"$PY" -m streams.topics

step 4 "simulating 14 days of history and training the models (market: $VARIANT) ..."
"$PY" -m models.train --out "$VAR/train" --quiet "${TRAIN_ARGS[@]}" 2>"$VAR/train.stderr" | tail -n 1

step 5 "exporting the ONNX bundle (parity-checked) ..."
"$PY" -m export --train-dir "$VAR/train" --model-dir "$VAR/models" --no-progress 2>"$VAR/export.stderr" | tail -n 3

step 6 "starting the pricing worker; $WARM_DAYS days of history into it, then the closed-loop market ($DAYS simulated days in ~${DURATION}s)"
"$PY" -m streams.app >"$VAR/worker.log" 2>&1 &
WORKER_PID=$!
echo "worker pid $WORKER_PID, log $VAR/worker.log"
MARKET_ARGS=(--train-dir "$VAR/train" --out "$VAR/run" --days "$DAYS" --duration "$DURATION"
             --publish-catalog --run-id "$RUN" --warm-days "$WARM_DAYS")
[[ -n ${DEMO_USERS:-} ]] && MARKET_ARGS+=(--users "$DEMO_USERS")
# in the background + wait: a TERM to this script then reaches the trap at once
"$PY" -m models.lab.live_market "${MARKET_ARGS[@]}" &
MARKET_PID=$!
wait "$MARKET_PID"

step 7 "evaluating the A/B test ..."
"$PY" -m models.lab.evaluate --exposures "$VAR/run" --model-dir "$VAR/models" --report-dir "$REPORT"
echo
echo "[demo] report: $REPORT/report.md (plots beside it); run data in $VAR"
if [[ $HOMOGENEOUS == 1 ]]; then
  "$PY" - "$REPORT/result.json" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))["headline"]
r = h["treatment_over_uniform"]
print(f"[demo] homogeneous market: treatment earns {100 * r:.1f} % of the best uniform price's expected profit "
      f"({'meets' if r >= 0.98 else 'misses'} the >= 98 % bar)")
EOF
fi
