#!/usr/bin/env bash
# bench/run.sh SCENARIO|all [--small]
#
# Runs a benchmark scenario against Tidings and against Nchan in the same run, on this
# machine, and prints the side-by-side table with ratios. SCENARIO is one of
#   idle           15,000 idle SSE connections, then WebSocket: server RSS per connection
#   unicast        10,000 users, 2,000 notifications/s for 60 s, each to one random user
#   fanout         one notification to 1,000 online users (Nchan: 1,000 publishes)
#   topic          one publish to a topic of 100,000 subscribers, 10,000 of them online over SSE:
#                  recipients committed per second and time until the last online has it, 3
#                  rounds (Nchan: 10,000 subscribers on one channel, one publish; --small: 2,000
#                  subscribers, 200 online)
#   ingest         highest durable publish rate, 1 and 100 recipients per request
#   cross-replica  unicast with subscribers on replica B, publishes to replica A, via Redis
#   scaling        a fixed publish rate while the cluster grows from 1 to 4 subscriber replicas
#                  (plus one replica that takes the publishes): one replica's bus CPU and
#                  events received, and the cluster's, with per-user channels on one Redis
#                  and on a Redis Cluster, and with the single shared channel (Tidings only)
#   baseline       the idle SSE measurement against a bare actix-web server (no hub, no
#                  actor, no timers): the framework's share of Tidings' figure
#   faces          Tidings only, its delivery faces side by side: one Tidings per transport in
#                  turn, the same unicast load (2,000 users, 1,000 notifications/s for 30 s)
#                  over SSE, gRPC `Subscribe` and MQTT (the bridge into a Mosquitto started
#                  here, 100 users per subscriber connection); then the MQTT bridge's sustained
#                  rate: 50,000 notifications to 1,000 users published at once, time until the
#                  outbox is empty, without and with MQTT subscribers consuming, and with the
#                  broker started only after the backlog is written (about 3 minutes)
#   prefs          Tidings only (issue 25): fanout to 1,000 and ingest x100 without preference
#                  rules, then with BENCH_PREFS_RULES (20) rules per user set through
#                  PUT /v1/preferences for every recipient first (none mutes what the bench
#                  publishes); one table each with the ratio (about 2 minutes)
#   webpush        Tidings only (issue 24): Web Push on (a fresh VAPID key, private endpoints
#                  allowed), a push service inside tidings-bench that time-stamps and answers
#                  201 (it does not decrypt: a push service never does), 1,000 subscriptions;
#                  10 notifications to all 1,000 at once (pushes/s), then one-recipient
#                  publishes at 200/s for 20 s (publish-to-receipt p50/p99) (about 1 minute)
#   c100k          100,000 SSE connections on this machine (issue 27): BENCH_C100K_REPLICAS (6)
#                  Tidings replicas on one Postgres and the Redis on 6379 (per-user channels),
#                  as many tidings-bench c100k-gen processes (one per replica, each under the
#                  20,000 open files of a process) holding the connections; one publish to a
#                  topic of all 100,000 users (time until the last has it), then unicast at
#                  BENCH_C100K_RATE (2,000/s) for BENCH_C100K_SECS (60), published through
#                  another replica than the recipient's: p50/p99, RSS per connection per
#                  replica, CPU, 0 lost. Then Nchan (BENCH_C100K_NCHAN_MODE: redis-aof, or
#                  memory, redis) with 8 workers (reuseport) and the same 100,000 subscribers,
#                  each also on one shared channel for the topic publish. --small: 6,000
#                  connections, 600/s for 10 s. Heavy: run it on a quiet machine only.
#   all            every one of them but scaling, faces, webpush and c100k (about 20 minutes), then
#                  results/summary.md and results/latency.svg
# --small: the CI check. `all --small` (or `unicast --small`) runs unicast over SSE with 200
# users for 5 seconds against Tidings and Nchan and exits non-zero if either lost, duplicated
# or misordered anything or a request failed. `SCENARIO --small` runs a small version of any
# scenario (a smoke test of the harness).
#
# It starts what it needs and stops it again (trap EXIT): Tidings release builds on a fresh
# PostgreSQL database per server (dropped afterwards), with Redis for cross-replica; Nchan via
# ../shared/peers/nchan/start.sh with its memory store, with `redis` (the Redis on 6379, no
# persistence), and as "nchan-redis-aof" with `redis` on a Redis of its own started here on
# BENCH_PORT_BASE+20 with `appendonly yes`, `appendfsync always` (as durable as Tidings: every
# table that has nchan-redis has it too). Only loopback.
#
# Needs: cargo, PostgreSQL reachable as postgres@127.0.0.1:5432 (trust auth, as scripts/test.sh
# sets up), redis-server (started here if nothing answers on 6379), and
#   apt-get install -y nginx libnginx-mod-nchan
# Environment:
#   BENCH_SKIP_BUILD=1     use the existing target/release binaries
#   TIDINGS_BIN=PATH       the server binary to run instead of target/$BENCH_PROFILE/tidings
#                          (then only tidings-bench is built; scripts/test.sh passes its debug build)
#   BENCH_RESULTS=DIR      where JSON results go (default bench/results; --small: a temp dir)
#   BENCH_PG_ADMIN=URL     admin connection (default postgres://postgres@127.0.0.1:5432/postgres)
#   BENCH_PORT_BASE=N      ports N..N+1 for Tidings, N+10..N+12 for Nchan, N+20 for the AOF
#                          Redis, N+30.. for c100k's replicas (default 18080)
#   BENCH_PREFS_RULES      rules per user in prefs (20)
#   BENCH_PREFS_ROUNDS     prefs' fan-out rounds (40; the fanout scenario has 10)
#   BENCH_WEBPUSH_USERS / _PER_USER / _ROUNDS / _RATE / _SECS   webpush's size (1,000 / 1 / 10 /
#                          200 / 20)
#   BENCH_C100K_CONNECTIONS / _REPLICAS / _PROCS / _RATE / _SECS / _NCHAN_MODE   c100k's size
#                          (100,000 / 6 / one per replica / 2,000 / 60 / redis-aof)
#   NCHAN_PEER_DIR=DIR     the Nchan peer scripts (default ../shared/peers/nchan)
#   BENCH_TOPIC_SUBSCRIBERS / _ONLINE / _ROUNDS   the topic scenario's size (100,000 / 10,000 / 3)
#   BENCH_SCALING_USERS / _RATE / _SECS / _MAX / _MODES   the scaling scenario's users (2,000),
#                          publishes/s (500), seconds per step (20), largest cluster (4), and
#                          modes (user-single,user-cluster,shared-single)
#   BENCH_FACES_USERS / _RATE / _SECS   faces' unicast load (2,000 users, 1,000/s, 30 s)
#   BENCH_MQTT_USERS_PER_CONN          user topics per MQTT subscriber connection (100)
#   BENCH_DRAIN_NOTIFICATIONS / _USERS  faces' MQTT backlog (50,000 notifications, 1,000 users)
#   faces needs mosquitto (apt-get install -y mosquitto), started here on a free port with a
#   generated configuration; the bridge's rate needs PostgreSQL (its outbox is counted)
#   TIDINGS__*             passed through to the Tidings servers (e.g. DATABASE__MAX_CONNECTIONS)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PEER="${NCHAN_PEER_DIR:-$(cd "$ROOT/.." && pwd)/shared/peers/nchan}"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
# Figures come from release builds; the --small loss check (CI) may use the debug build the
# test suite already made, which spares a cold release build: BENCH_PROFILE=debug|release.
PROFILE="${BENCH_PROFILE:-release}"
case "$PROFILE" in release) PROFILE_FLAG=(--release) ;; debug) PROFILE_FLAG=() ;; *) echo "BENCH_PROFILE must be debug or release" >&2; exit 2 ;; esac
TIDINGS="$TARGET_DIR/$PROFILE/tidings"
if [ -n "${TIDINGS_BIN:-}" ]; then
  case "$TIDINGS_BIN" in /*) TIDINGS="$TIDINGS_BIN" ;; *) TIDINGS="$PWD/$TIDINGS_BIN" ;; esac
fi
BENCH="$TARGET_DIR/$PROFILE/tidings-bench"
PG_ADMIN="${BENCH_PG_ADMIN:-postgres://postgres@127.0.0.1:5432/postgres}"
PORT_BASE="${BENCH_PORT_BASE:-18080}"
T_PORT_A=$PORT_BASE
T_PORT_B=$((PORT_BASE + 1))
N_PORT=$((PORT_BASE + 10))
N_PORT_A=$((PORT_BASE + 11))
N_PORT_B=$((PORT_BASE + 12))

usage() {
  sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | grep '^#' | sed 's/^# \{0,1\}//' >&2
  exit 2
}
log() { echo "run.sh: $*" >&2; }
die() { log "$*"; exit 1; }

SCEN="${1:-}"
[ -n "$SCEN" ] || usage
shift
SMALL=0
for a in "$@"; do
  case "$a" in
    --small) SMALL=1 ;;
    *) usage ;;
  esac
done
case "$SCEN" in
  idle | unicast | fanout | topic | ingest | cross-replica | scaling | baseline | faces | prefs | webpush | c100k | all) ;;
  *) usage ;;
esac
if [ "$SMALL" = 1 ] && [ "$SCEN" = all ]; then SCEN=unicast; fi

RUNID="$(date +%s | tail -c 7)$$"
WORK="$(mktemp -d "/tmp/tidings-bench.XXXXXX")"
if [ "$SMALL" = 1 ]; then
  RESULTS="${BENCH_RESULTS:-$WORK/results}"
else
  RESULTS="${BENCH_RESULTS:-$HERE/results}"
fi
mkdir -p "$RESULTS"
SECRET="bench-$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')"
export TIDINGS__AUTH__JWT_SECRET="$SECRET"

# ------------------------------------------------------------------ cleanup ---
TIDINGS_PIDS=()
declare -A T_LOGS=()
NCHAN_PORTS=()
DATABASES=()
REDIS_PIDFILE=""
FAILED=0
OUTPUTS=()

stop_tidings_pid() {
  local pid=$1 i
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  log "tidings $pid did not stop in 10 s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

drop_db() {
  psql -X -q -d "$PG_ADMIN" -c "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)" >/dev/null 2>&1 ||
    log "could not drop database $1"
}

cleanup() {
  local rc=$? p db
  for p in "${TIDINGS_PIDS[@]}"; do stop_tidings_pid "$p"; done
  for p in "${NCHAN_PORTS[@]}"; do NCHAN_PEER_RM_PREFIX=1 "$PEER/stop.sh" "$p" 2>/dev/null || true; done
  for db in "${DATABASES[@]}"; do drop_db "$db"; done
  for p in "${CLUSTER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "$WORK"/mosquitto-*/pid; do
    if [ -f "$p" ]; then kill -TERM "$(cat "$p")" 2>/dev/null || true; fi
  done
  if command -v redis-cli >/dev/null && [ -n "${REDIS_UP:-}" ]; then
    # Nchan's Redis keys of this run ({channel:/rRUNID...}); Tidings' bus keeps none.
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "*r${RUNID}*" 2>/dev/null |
      xargs -r -n 1000 redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
  fi
  if declare -F stop_redis_aof >/dev/null; then stop_redis_aof; fi
  if [ -n "$REDIS_PIDFILE" ] && [ -f "$REDIS_PIDFILE" ]; then
    kill -TERM "$(cat "$REDIS_PIDFILE")" 2>/dev/null || true
  fi
  rm -rf "$WORK/srv"
  [ "$SMALL" = 1 ] && [ -z "${BENCH_RESULTS:-}" ] && rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# -------------------------------------------------------------------- setup ---
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
log "open-file limit $(ulimit -n) (servers inherit it; each side needs > 15,000 for idle)"

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "building ($PROFILE)"
  [ -n "${TIDINGS_BIN:-}" ] || (cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -q -p tidings --bin tidings)
  (cd "$ROOT" && cargo build "${PROFILE_FLAG[@]}" -q -p tidings-bench --bins)
fi
[ -x "$TIDINGS" ] || die "no $TIDINGS (build it: cargo build ${PROFILE_FLAG[*]} -p tidings --bin tidings)"
log "server binary: $TIDINGS"
[ -x "$BENCH" ] || die "no $BENCH (build it: cargo build ${PROFILE_FLAG[*]} -p tidings-bench)"
if [ "$SCEN" = faces ]; then
  MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
  [ -x "$MOSQUITTO" ] || die "mosquitto is not installed: apt-get install -y mosquitto"
elif [ "$SCEN" != scaling ] && [ "$SCEN" != prefs ] && [ "$SCEN" != webpush ]; then
  [ -x "$PEER/start.sh" ] || die "no Nchan peer scripts in $PEER"
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] ||
    die "Nchan is not installed: apt-get install -y nginx libnginx-mod-nchan"
fi

PG_OK=0
if command -v psql >/dev/null && psql -X -q -d "$PG_ADMIN" -tAc 'select 1' >/dev/null 2>&1; then
  PG_OK=1
elif [ "$SMALL" = 1 ] && [ "$SCEN" != cross-replica ]; then
  log "PostgreSQL is not reachable at $PG_ADMIN; the small check uses SQLite instead"
else
  die "PostgreSQL is not reachable at $PG_ADMIN (scripts/test.sh starts it)"
fi

REDIS_UP=""
need_redis() {
  [ -n "$REDIS_UP" ] && return 0
  command -v redis-cli >/dev/null || die "redis-cli not found (apt-get install -y redis-server)"
  if [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" != PONG ]; then
    log "starting redis-server on 127.0.0.1:6379"
    REDIS_PIDFILE="$WORK/redis.pid"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no \
      --pidfile "$REDIS_PIDFILE" >/dev/null
    for _ in $(seq 50); do [ "$(redis-cli ping 2>/dev/null)" = PONG ] && break; sleep 0.1; done
  fi
  REDIS_UP=1
}

# ------------------------------------------------------------------ servers ---
SRV_N=0
# start_tidings PORT [redis]: a fresh database; sets T_PID (and T_DB)
start_tidings() {
  local port=$1 mode=${2:-} db_url dir
  SRV_N=$((SRV_N + 1))
  dir="$WORK/srv/tidings-$SRV_N"
  mkdir -p "$dir"
  if [ -n "${T_SHARED_DB:-}" ]; then
    db_url="$T_SHARED_DB"
  elif [ "$PG_OK" = 1 ]; then
    T_DB="tidings_bench_${RUNID}_$SRV_N"
    psql -X -q -d "$PG_ADMIN" -c "CREATE DATABASE \"$T_DB\"" >/dev/null
    DATABASES+=("$T_DB")
    db_url="${PG_ADMIN%/*}/$T_DB"
  else
    db_url="sqlite://$dir/tidings.db"
  fi
  T_DB_URL="$db_url"
  local -a extra=()
  if [ "$mode" = redis ]; then
    # T_REDIS_URL: a Redis Cluster's seeds (the scaling scenario).
    [ -n "${T_REDIS_URL:-}" ] || need_redis
    extra=(TIDINGS__REDIS__URL="${T_REDIS_URL:-redis://127.0.0.1:6379}" TIDINGS__REDIS__CHANNEL="bench:$RUNID")
  fi
  # T_GRPC_LISTEN: the gRPC listener (off unless a scenario measures it); T_MQTT_URL: the
  # broker of the MQTT bridge (off unless set).
  if [ -n "${T_MQTT_URL:-}" ]; then extra+=(TIDINGS__MQTT__URL="$T_MQTT_URL"); fi
  # A fresh working directory: no .env or tidings.toml of the caller is read.
  (cd "$dir" && exec env -u TIDINGS_CONFIG -u RUST_LOG \
    TIDINGS__SERVER__LISTEN="127.0.0.1:$port" \
    TIDINGS__GRPC__LISTEN="${T_GRPC_LISTEN:-off}" \
    TIDINGS__DATABASE__URL="$db_url" \
    TIDINGS__LOG__LEVEL="${TIDINGS__LOG__LEVEL:-warn}" \
    TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS="${TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS:-2}" \
    "${extra[@]}" "$TIDINGS" serve) >"$dir/log" 2>&1 &
  T_PID=$!
  TIDINGS_PIDS+=("$T_PID")
  T_LOGS[$T_PID]="$dir/log"
  local i
  for i in $(seq 300); do
    kill -0 "$T_PID" 2>/dev/null || { cat "$dir/log" >&2; die "tidings on port $port exited at start"; }
    curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" && break
    sleep 0.1
  done
  curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:$port/readyz" ||
    { cat "$dir/log" >&2; die "tidings on port $port did not become ready"; }
  log "tidings up on $port (pid $T_PID, ${mode:-in-process bus}, $(echo "$db_url" | sed 's#//[^@]*@#//#')${T_GRPC_LISTEN:+, gRPC on $T_GRPC_LISTEN}${T_MQTT_URL:+, MQTT bridge to $T_MQTT_URL})"
}

stop_tidings() { # PID
  stop_tidings_pid "$1"
  local log="${T_LOGS[$1]:-}"
  if [ -n "$log" ] && grep -qE 'panicked|ERROR' "$log"; then
    log "tidings (pid $1) logged errors ($log):"
    grep -E 'panicked|ERROR' "$log" | tail -5 >&2
  fi
}

drop_tidings_db() {
  [ -n "${T_DB:-}" ] && drop_db "$T_DB"
  T_DB=""
}

# The durable peer: Nchan's Redis store on a Redis of its own, on port AOF_PORT, that appends
# every write to its AOF and fsyncs it before answering (`appendfsync always`), as durable as
# Tidings' commit. The tests' Redis on 6379 is left alone. The peer's scripts are copied with
# every 6379 turned into AOF_PORT (../shared is not edited). One per scenario: started when
# first needed, stopped (and its files removed) by stop_redis_aof, so no scenario pays for an
# earlier one's AOF growing or being rewritten.
AOF_PORT=$((PORT_BASE + 20))
AOF_PEER="$WORK/nchan-aof-peer"
AOF_PID=""
start_redis_aof() {
  [ -n "$AOF_PID" ] && kill -0 "$AOF_PID" 2>/dev/null && return 0
  command -v redis-server >/dev/null || die "redis-server not found (apt-get install -y redis-server)"
  local dir="$WORK/redis-aof"
  rm -rf "$dir"; mkdir -p "$dir"
  (cd "$dir" && exec redis-server --port "$AOF_PORT" --bind 127.0.0.1 --dir "$dir" --save '' \
    --appendonly yes --appendfsync always) >"$dir/log" 2>&1 &
  AOF_PID=$!
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$AOF_PORT" ping 2>/dev/null)" = PONG ] && break
    kill -0 "$AOF_PID" 2>/dev/null || { cat "$dir/log" >&2; die "redis-server (AOF) exited at start"; }
    sleep 0.1
  done
  [ "$(redis-cli -p "$AOF_PORT" config get appendfsync | tail -1)" = always ] ||
    die "the AOF Redis on $AOF_PORT does not say appendfsync always"
  mkdir -p "$AOF_PEER"
  cp "$PEER/start.sh" "$PEER/stop.sh" "$PEER/nginx.conf" "$AOF_PEER/"
  sed "s/6379/$AOF_PORT/g" "$PEER/nginx-redis.conf" >"$AOF_PEER/nginx-redis.conf"
  sed -i "s/6379/$AOF_PORT/g" "$AOF_PEER/start.sh"
  log "redis-server up on $AOF_PORT (pid $AOF_PID, appendonly yes, appendfsync always)"
}
stop_redis_aof() {
  [ -n "$AOF_PID" ] || return 0
  kill -TERM "$AOF_PID" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$AOF_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$AOF_PID" 2>/dev/null || true
  AOF_PID=""
  rm -rf "$WORK/redis-aof"
}

# start_nchan PORT [memory|redis|redis-aof]: sets N_WORKERS (comma-separated worker pids)
start_nchan() {
  local port=$1 mode=${2:-memory} pidfile master peer=$PEER pmode=${2:-memory}
  case "$mode" in
    redis) need_redis ;;
    redis-aof) start_redis_aof; peer=$AOF_PEER; pmode=redis ;;
  esac
  pidfile="$("$peer/start.sh" "$port" "$pmode")"
  NCHAN_PORTS+=("$port")
  master="$(cat "$pidfile")"
  N_WORKERS="$(pgrep -P "$master" | paste -sd, -)"
  log "nchan up on $port ($mode; master $master, workers $N_WORKERS)"
}

stop_nchan() { NCHAN_PEER_RM_PREFIX=1 "$PEER/stop.sh" "$1" 2>/dev/null || true; }

# A TCP port nothing listens on now (the kernel picks it).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A private Mosquitto per measurement, on a free loopback port with a generated configuration
# (anonymous, no persistence). The queue per client is raised from 1,000 so that a subscriber
# behind a drained backlog is not dropped messages; TCP_NODELAY as a latency-minded deployment
# would set it. mosquitto_prepare writes MQ_DIR/{mosquitto.conf,port} and sets MQ_DIR and
# MQ_PORT; "bash $MQ_UP $MOSQUITTO $MQ_DIR" starts that broker, waits until it listens and
# prints its pid (also in MQ_DIR/pid, which stop_mosquitto and the exit trap read). The bench
# runs that command itself when the broker must come up after a backlog is written.
MQ_N=0
MQ_UP="$WORK/mosquitto-up.sh"
printf '%s\n' '#!/usr/bin/env bash' \
  '# mosquitto-up.sh MOSQUITTO DIR (written by bench/run.sh)' \
  '"$1" -c "$2/mosquitto.conf" >"$2/log" 2>&1 </dev/null &' \
  'pid=$!' \
  'echo "$pid" >"$2/pid"' \
  'port=$(cat "$2/port")' \
  'for _ in $(seq 200); do' \
  '  kill -0 "$pid" 2>/dev/null || { cat "$2/log" >&2; exit 1; }' \
  '  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { echo "$pid"; exit 0; }' \
  '  sleep 0.05' \
  'done' \
  'echo "mosquitto did not listen on $port" >&2' \
  'exit 1' >"$MQ_UP"

mosquitto_prepare() {
  MQ_N=$((MQ_N + 1))
  MQ_DIR="$WORK/mosquitto-$MQ_N"
  mkdir -p "$MQ_DIR"
  MQ_PORT=$(free_port)
  echo "$MQ_PORT" >"$MQ_DIR/port"
  printf '%s\n' "listener $MQ_PORT 127.0.0.1" "allow_anonymous true" "persistence false" \
    "max_queued_messages 1000000" "set_tcp_nodelay true" "log_dest stderr" \
    "log_type error" "log_type warning" >"$MQ_DIR/mosquitto.conf"
}

# start_mosquitto: prepares and starts one; sets MQ_PID.
start_mosquitto() {
  mosquitto_prepare
  MQ_PID=$(bash "$MQ_UP" "$MOSQUITTO" "$MQ_DIR") || die "mosquitto did not start"
  log "mosquitto up on $MQ_PORT (pid $MQ_PID, $("$MOSQUITTO" -h 2>/dev/null | head -1))"
}

stop_mosquitto() {
  local pid i
  pid=$(cat "$MQ_DIR/pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# bench NAME ARGS...: runs tidings-bench, result in $RESULTS/NAME.json
bench() {
  local name=$1
  shift
  local out="$RESULTS/$name.json"
  SRV_N=$((SRV_N + 1))
  local prefix="r${RUNID}x${SRV_N}-"
  echo
  echo "=== $name"
  if "$BENCH" "$@" --prefix "$prefix" --json "$out" 2>&1 | tee "$WORK/$name.log" |
    grep -v '^  connecting:'; then
    OUTPUTS+=("$out")
  else
    log "$name failed"
    FAILED=1
    [ -f "$out" ] && OUTPUTS+=("$out")
  fi
}

# ---------------------------------------------------------------- scenarios ---
if [ "$SMALL" = 1 ]; then
  IDLE_N=200 UC_USERS=200 UC_RATE=200 UC_DUR=5 FO_N=200 FO_ROUNDS=3 ING_DUR=2 ING_CONC=8 XR_DUR=5
  FC_USERS=200 FC_RATE=200 FC_DUR=5 DR_N=2000 DR_USERS=100
  CHECK=(--fail-on-loss)
else
  IDLE_N=15000 UC_USERS=10000 UC_RATE=2000 UC_DUR=60 FO_N=1000 FO_ROUNDS=10 ING_DUR=8
  ING_CONC=16,64,256 XR_DUR=30
  FC_USERS=2000 FC_RATE=1000 FC_DUR=30 DR_N=50000 DR_USERS=1000
  CHECK=()
fi
# Overrides, e.g. BENCH_UNICAST_RATE=1000 bench/run.sh unicast
IDLE_N="${BENCH_IDLE_CONNECTIONS:-$IDLE_N}"
UC_USERS="${BENCH_UNICAST_USERS:-$UC_USERS}"
UC_RATE="${BENCH_UNICAST_RATE:-$UC_RATE}"
UC_DUR="${BENCH_UNICAST_SECS:-$UC_DUR}"
XR_DUR="${BENCH_CROSS_SECS:-$XR_DUR}"
FO_N="${BENCH_FANOUT_RECIPIENTS:-$FO_N}"
FO_ROUNDS="${BENCH_FANOUT_ROUNDS:-$FO_ROUNDS}"
ING_DUR="${BENCH_INGEST_SECS:-$ING_DUR}"
ING_CONC="${BENCH_INGEST_CONCURRENCY:-$ING_CONC}"
TP_SUBS="${BENCH_TOPIC_SUBSCRIBERS:-$([ "$SMALL" = 1 ] && echo 2000 || echo 100000)}"
TP_ONLINE="${BENCH_TOPIC_ONLINE:-$([ "$SMALL" = 1 ] && echo 200 || echo 10000)}"
TP_ROUNDS="${BENCH_TOPIC_ROUNDS:-3}"
FC_USERS="${BENCH_FACES_USERS:-$FC_USERS}"
FC_RATE="${BENCH_FACES_RATE:-$FC_RATE}"
FC_DUR="${BENCH_FACES_SECS:-$FC_DUR}"
MQ_PER_CONN="${BENCH_MQTT_USERS_PER_CONN:-100}"
DR_N="${BENCH_DRAIN_NOTIFICATIONS:-$DR_N}"
DR_USERS="${BENCH_DRAIN_USERS:-$DR_USERS}"
PR_RULES="${BENCH_PREFS_RULES:-20}"
# The fan-out rounds of prefs: a 10-round median moved by ±15 % between runs of the same
# build (the disk's flush time), more than the 10 % the comparison is about.
PR_ROUNDS="${BENCH_PREFS_ROUNDS:-$([ "$SMALL" = 1 ] && echo "$FO_ROUNDS" || echo 40)}"
C1_N="${BENCH_C100K_CONNECTIONS:-$([ "$SMALL" = 1 ] && echo 6000 || echo 100000)}"
C1_REPLICAS="${BENCH_C100K_REPLICAS:-6}"
C1_PROCS="${BENCH_C100K_PROCS:-$C1_REPLICAS}"
C1_RATE="${BENCH_C100K_RATE:-$([ "$SMALL" = 1 ] && echo 600 || echo 2000)}"
C1_DUR="${BENCH_C100K_SECS:-$([ "$SMALL" = 1 ] && echo 10 || echo 60)}"
C1_NCHAN_MODE="${BENCH_C100K_NCHAN_MODE:-redis-aof}"
WP_USERS="${BENCH_WEBPUSH_USERS:-$([ "$SMALL" = 1 ] && echo 100 || echo 1000)}"
WP_PER_USER="${BENCH_WEBPUSH_PER_USER:-1}"
WP_ROUNDS="${BENCH_WEBPUSH_ROUNDS:-$([ "$SMALL" = 1 ] && echo 3 || echo 10)}"
WP_RATE="${BENCH_WEBPUSH_RATE:-$([ "$SMALL" = 1 ] && echo 50 || echo 200)}"
WP_DUR="${BENCH_WEBPUSH_SECS:-$([ "$SMALL" = 1 ] && echo 3 || echo 20)}"

run_idle() {
  local tr
  for tr in sse ws; do
    start_tidings "$T_PORT_A"
    bench "idle-$tr-tidings-pg" idle --target tidings --url "http://127.0.0.1:$T_PORT_A" \
      --connections "$IDLE_N" --transport "$tr" --server-pid "$T_PID" --label tidings-pg
    stop_tidings "$T_PID"; drop_tidings_db
    start_nchan "$N_PORT" memory
    bench "idle-$tr-nchan-memory" idle --target nchan --url "http://127.0.0.1:$N_PORT" \
      --connections "$IDLE_N" --transport "$tr" --server-pid "$N_WORKERS" --label nchan-memory
    stop_nchan "$N_PORT"
  done
  local mode
  for mode in redis redis-aof; do
    start_nchan "$N_PORT" "$mode"
    bench "idle-sse-nchan-$mode" idle --target nchan --url "http://127.0.0.1:$N_PORT" \
      --connections "$IDLE_N" --transport sse --server-pid "$N_WORKERS" --label "nchan-$mode"
    stop_nchan "$N_PORT"
  done
  stop_redis_aof
}

UC_ARGS=()
set_uc_args() { UC_ARGS=(--users "$UC_USERS" --rate "$UC_RATE" --duration "$1" --transport sse "${CHECK[@]}"); }

run_unicast() {
  set_uc_args "$UC_DUR"
  start_tidings "$T_PORT_A"
  bench "unicast-sse-tidings-pg" unicast --target tidings --url "http://127.0.0.1:$T_PORT_A" \
    --server-pid "$T_PID" --label tidings-pg "${UC_ARGS[@]}"
  stop_tidings "$T_PID"; drop_tidings_db
  start_nchan "$N_PORT" memory
  bench "unicast-sse-nchan-memory" unicast --target nchan --url "http://127.0.0.1:$N_PORT" \
    --server-pid "$N_WORKERS" --label nchan-memory "${UC_ARGS[@]}"
  stop_nchan "$N_PORT"
  if [ "$SMALL" != 1 ] || [ "$SCEN" != unicast ]; then
    local mode
    for mode in redis redis-aof; do
      start_nchan "$N_PORT" "$mode"
      bench "unicast-sse-nchan-$mode" unicast --target nchan --url "http://127.0.0.1:$N_PORT" \
        --server-pid "$N_WORKERS" --label "nchan-$mode" "${UC_ARGS[@]}"
      stop_nchan "$N_PORT"
    done
    stop_redis_aof
  fi
}

run_fanout() {
  local args=(--recipients "$FO_N" --rounds "$FO_ROUNDS" --transport sse "${CHECK[@]}")
  start_tidings "$T_PORT_A"
  bench "fanout-sse-tidings-pg" fanout --target tidings --url "http://127.0.0.1:$T_PORT_A" \
    --server-pid "$T_PID" --label tidings-pg "${args[@]}"
  stop_tidings "$T_PID"; drop_tidings_db
  local mode
  for mode in memory redis redis-aof; do
    start_nchan "$N_PORT" "$mode"
    bench "fanout-sse-nchan-$mode" fanout --target nchan --url "http://127.0.0.1:$N_PORT" \
      --server-pid "$N_WORKERS" --label "nchan-$mode" "${args[@]}"
    stop_nchan "$N_PORT"
  done
  stop_redis_aof
}

# Tidings on Postgres: a topic of TP_SUBS users, TP_ONLINE of them online. Nchan (memory, then
# redis): TP_ONLINE subscribers on one channel, its native fan-out; no per-subscriber storage.
run_topic() {
  local args=(--online "$TP_ONLINE" --rounds "$TP_ROUNDS" --transport sse "${CHECK[@]}")
  start_tidings "$T_PORT_A"
  bench "topic-sse-tidings-pg" topic --target tidings --url "http://127.0.0.1:$T_PORT_A" \
    --server-pid "$T_PID" --label tidings-pg --subscribers "$TP_SUBS" "${args[@]}"
  stop_tidings "$T_PID"; drop_tidings_db
  local mode
  for mode in memory redis redis-aof; do
    start_nchan "$N_PORT" "$mode"
    bench "topic-sse-nchan-$mode" topic --target nchan --url "http://127.0.0.1:$N_PORT" \
      --server-pid "$N_WORKERS" --label "nchan-$mode" "${args[@]}"
    stop_nchan "$N_PORT"
  done
  stop_redis_aof
}

run_ingest() {
  local rpr
  for rpr in 1 100; do
    local args=(--recipients-per-request "$rpr" --concurrency "$ING_CONC" --duration "$ING_DUR")
    start_tidings "$T_PORT_A"
    bench "ingest-x$rpr-tidings-pg" ingest --target tidings --url "http://127.0.0.1:$T_PORT_A" \
      --server-pid "$T_PID" --label tidings-pg --users 10000 "${args[@]}"
    stop_tidings "$T_PID"; drop_tidings_db
    # Reference only: Nchan keeps messages in memory, nothing is durable. It keeps the last 100
    # messages of every channel in 256 MB of shared memory, which 10,000 channels overflow
    # within seconds (507 Insufficient Storage), so its publishes go to 1,000 channels.
    start_nchan "$N_PORT" memory
    bench "ingest-x$rpr-nchan-memory" ingest --target nchan --url "http://127.0.0.1:$N_PORT" \
      --server-pid "$N_WORKERS" --label nchan-memory --users 1000 "${args[@]}"
    stop_nchan "$N_PORT"
  done
}

run_cross_replica() {
  set_uc_args "$XR_DUR"
  local a b
  start_tidings "$T_PORT_A" redis
  a=$T_PID
  T_SHARED_DB="$T_DB_URL" start_tidings "$T_PORT_B" redis
  b=$T_PID
  bench "cross-replica-sse-tidings-pg-redis" cross-replica --target tidings \
    --url "http://127.0.0.1:$T_PORT_A" --sub-url "http://127.0.0.1:$T_PORT_B" \
    --server-pid "$b" --cpu-pid "$a" --label tidings-pg-redis "${UC_ARGS[@]}"
  stop_tidings "$a"; stop_tidings "$b"; drop_tidings_db
  local mode
  for mode in redis redis-aof; do
    start_nchan "$N_PORT_A" "$mode"
    a=$N_WORKERS
    start_nchan "$N_PORT_B" "$mode"
    bench "cross-replica-sse-nchan-$mode" cross-replica --target nchan \
      --url "http://127.0.0.1:$N_PORT_A" --sub-url "http://127.0.0.1:$N_PORT_B" \
      --server-pid "$N_WORKERS" --cpu-pid "$a" --label "nchan-$mode" "${UC_ARGS[@]}"
    stop_nchan "$N_PORT_A"; stop_nchan "$N_PORT_B"
  done
  stop_redis_aof
}

# -------------------------------------------------------------------- prefs ---
# The fan-out and ingest x100 figures without preference rules and with PR_RULES per user, in
# turn, each pair back to back on fresh databases, so drift in the machine hits both alike.
run_prefs() {
  local n label
  for n in 0 "$PR_RULES"; do
    label=tidings-pg-no-rules
    [ "$n" = 0 ] || label="tidings-pg-$n-rules"
    start_tidings "$T_PORT_A"
    bench "prefs-fanout-sse-tidings-pg-$n-rules" fanout --target tidings \
      --url "http://127.0.0.1:$T_PORT_A" --server-pid "$T_PID" --label "$label" \
      --preference-rules "$n" --recipients "$FO_N" --rounds "$PR_ROUNDS" --transport sse "${CHECK[@]}"
    stop_tidings "$T_PID"; drop_tidings_db
  done
  for n in 0 "$PR_RULES"; do
    label=tidings-pg-no-rules
    [ "$n" = 0 ] || label="tidings-pg-$n-rules"
    start_tidings "$T_PORT_A"
    bench "prefs-ingest-x100-tidings-pg-$n-rules" ingest --target tidings \
      --url "http://127.0.0.1:$T_PORT_A" --server-pid "$T_PID" --label "$label" \
      --preference-rules "$n" --users 10000 --recipients-per-request 100 \
      --concurrency "$ING_CONC" --duration "$ING_DUR"
    stop_tidings "$T_PID"; drop_tidings_db
  done
}

# ------------------------------------------------------------------ webpush ---
run_webpush() {
  local key
  key="$("$TIDINGS" vapid-keys | sed -n 's/^TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY=//p')"
  [ -n "$key" ] || die "tidings vapid-keys printed no key"
  TIDINGS__WEBPUSH__VAPID_PRIVATE_KEY="$key" TIDINGS__WEBPUSH__SUBJECT="mailto:bench@example.com" \
    TIDINGS__WEBPUSH__ALLOW_INSECURE_ENDPOINTS=true start_tidings "$T_PORT_A"
  bench "webpush-tidings-pg" webpush --target tidings --url "http://127.0.0.1:$T_PORT_A" \
    --server-pid "$T_PID" --label tidings-pg --users "$WP_USERS" --per-user "$WP_PER_USER" \
    --rounds "$WP_ROUNDS" --rate "$WP_RATE" --duration "$WP_DUR" "${CHECK[@]}"
  stop_tidings "$T_PID"; drop_tidings_db
}

# -------------------------------------------------------------------- c100k ---
# VmRSS of each PID (kB), space-separated.
rss_kb() { local p; for p in "$@"; do awk '/^VmRSS:/ {printf "%s ", $2}' "/proc/$p/status" 2>/dev/null || printf '0 '; done; }

# c100k_run LABEL TARGET: starts the generator processes against the servers in C1_PORTS /
# C1_PIDS (Nchan: one port, every worker in C1_PIDS), runs the barriers, and merges their
# JSON into $RESULTS/c100k-LABEL.json.
c100k_run() {
  local label=$1 target=$2 k n_srv=${#C1_PORTS[@]} gpids=() dir="$WORK/c100k-$1"
  local prefix="r${RUNID}c${label//[^a-z0-9]/}-" topic
  topic="${prefix}all"
  [ "$target" = nchan ] && topic="$C1_NCHAN_TOPIC"
  mkdir -p "$dir/barrier"
  local all_pids; all_pids="$(IFS=,; echo "${C1_PIDS[*]}")"
  local rss0; rss0="$(rss_kb "${C1_PIDS[@]}")"
  echo
  echo "=== c100k-$label ($C1_N connections, $C1_PROCS generator processes, $n_srv server ports)"
  for k in $(seq 0 $((C1_PROCS - 1))); do
    local users=$((C1_N / C1_PROCS)) sub=$((k % n_srv)) pub=$(((k + 1) % n_srv)) more=()
    [ "$k" -lt $((C1_N % C1_PROCS)) ] && users=$((users + 1))
    [ "$k" = 0 ] && more=(--topic-publisher)
    local rate=$((C1_RATE / C1_PROCS))
    [ "$k" -lt $((C1_RATE % C1_PROCS)) ] && rate=$((rate + 1))
    "$BENCH" c100k-gen --target "$target" --label "$label" \
      --url "http://127.0.0.1:${C1_PORTS[$pub]}" --sub-url "http://127.0.0.1:${C1_PORTS[$sub]}" \
      --cpu-pid "$all_pids" --users "$users" --index "$k" --procs "$C1_PROCS" \
      --topic "$topic" --topic-total "$C1_N" --barrier "$dir/barrier" --rate "$rate" \
      --duration "$C1_DUR" --prefix "$prefix" --json "$dir/gen-$k.json" "${more[@]}" \
      >"$dir/gen-$k.log" 2>&1 &
    gpids+=($!)
  done
  local t0; t0=$(date +%s)
  while [ "$(find "$dir/barrier" -name 'ready-*' | wc -l)" -lt "$C1_PROCS" ]; do
    for k in "${gpids[@]}"; do
      kill -0 "$k" 2>/dev/null || { tail -5 "$dir"/gen-*.log >&2; die "a c100k generator exited before it was ready"; }
    done
    [ $(($(date +%s) - t0)) -lt 900 ] || die "c100k: the generators did not connect within 900 s"
    sleep 1
  done
  local connect_s=$(($(date +%s) - t0))
  sleep 2
  local rss1; rss1="$(rss_kb "${C1_PIDS[@]}")"
  log "c100k-$label: every generator ready after ${connect_s} s; server RSS (kB) $rss0 -> $rss1"
  : >"$dir/barrier/go"
  local failed=0
  for k in "${gpids[@]}"; do wait "$k" || failed=$((failed + 1)); done
  grep -h '^\[' "$dir"/gen-*.log | sed 's/^/  /' || true
  python3 - "$dir" "$RESULTS/c100k-$label.json" "$label" "$target" "$C1_N" "$C1_PROCS" \
    "$connect_s" "$rss0" "$rss1" "$failed" "$all_pids" "$C1_RATE" "$C1_DUR" <<'PY'
import json, sys, glob, os
d, out, label, target, n, procs, connect_s, rss0, rss1, failed, pids, rate, dur = sys.argv[1:]
gens = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(d, "gen-*.json")))]
rss0 = [int(x) for x in rss0.split()]; rss1 = [int(x) for x in rss1.split()]
pids = pids.split(",")
# Merged unicast latency: every process's histogram buckets.
buckets = {}
for g in gens:
    for v, c in g.get("latency_buckets", []):
        buckets[v] = buckets.get(v, 0) + c
total = sum(buckets.values())
def q(p):
    if not total: return None
    want, acc = p * total, 0
    for v in sorted(buckets):
        acc += buckets[v]
        if acc >= want: return v
    return max(buckets)
lat = {"count": total, "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "p999": q(0.999),
       "max": max(buckets) if buckets else None}
conns = sum(g["connections"]["connected"] for g in gens)
# Connections per server: Tidings, each replica's own generators (process k on port k % R);
# Nchan, all on one server whose workers are summed.
if target == "tidings":
    per = {}
    for g in gens:
        r = g["params"]["index"] % len(pids)
        per[r] = per.get(r, 0) + g["connections"]["connected"]
    replicas = [{"pid": int(pids[i]), "connections": per.get(i, 0), "rss_kb_before": rss0[i],
                 "rss_kb_after": rss1[i],
                 "bytes_per_conn": round((rss1[i] - rss0[i]) * 1024 / per[i]) if per.get(i) else None}
                for i in range(len(pids))]
else:
    replicas = [{"pids": [int(p) for p in pids], "connections": conns, "rss_kb_before": sum(rss0),
                 "rss_kb_after": sum(rss1),
                 "bytes_per_conn": round((sum(rss1) - sum(rss0)) * 1024 / conns) if conns else None}]
sum_of = lambda key: sum(g["delivery"][key] for g in gens)
pub = next((g["topic"]["published"] for g in gens if g["topic"]["published"].get("status")), {})
topic_last = max(g["topic"]["time_to_last_us"] for g in gens)
received_topic = sum(g["topic"]["received"] for g in gens)
g0 = next((g for g in gens if g["params"]["index"] == 0), gens[0])
delivered = sum(g["delivery"]["received"] for g in gens) - received_topic
cpu = g0["cpu"]
res = {
    "scenario": "c100k", "variant": "sse", "target": target, "label": label,
    "params": {"connections": int(n), "processes": int(procs), "servers": len(replicas) if target == "tidings" else 1,
               "unicast_rate": int(rate), "duration_s": int(dur)},
    "machine": g0.get("machine"), "finished_unix": max(g["finished_unix"] for g in gens),
    "connections": {"requested": int(n), "connected": conns,
                    "failed": sum(g["connections"]["failed"] for g in gens),
                    "dropped": sum(g["connections"]["dropped"] for g in gens),
                    "connect_secs": int(connect_s)},
    "servers": replicas,
    "rss": {"bytes_per_conn": round((sum(rss1) - sum(rss0)) * 1024 / conns) if conns else None,
            "max_bytes_per_conn": max((r["bytes_per_conn"] or 0) for r in replicas)},
    "topic": {"publish": pub, "expected": sum(g["topic"]["expected"] for g in gens),
              "received": received_topic, "time_to_last_us": topic_last,
              "recipients_per_s": round(pub["recipients"] / (pub["publish_us"] / 1e6)) if pub.get("recipients") and pub.get("publish_us") else None,
              "cpu": g0["topic"]["cpu"]},
    "latency_us": lat,
    "delivered_per_s": round(delivered / max(1e-9, max(g["publish"]["secs"] for g in gens))),
    "publish": {"accepted": sum(g["publish"]["accepted"] for g in gens),
                "failed": sum(g["publish"]["failed"] for g in gens)},
    "delivery": {k: sum_of(k) for k in ["expected", "received", "lost", "duplicated", "unexpected", "seq_gaps", "seq_backwards"]},
    "cpu": cpu,
    "server_cpu_ms_per_1000": round(cpu["server_cpu_s"] * 1e6 / delivered, 2) if delivered else None,
    "generators_failed": int(failed),
    "ok": all(g["ok"] for g in gens) and int(failed) == 0,
    "generators": [os.path.basename(f) for f in sorted(glob.glob(os.path.join(d, "gen-*.json")))],
}
json.dump(res, open(out, "w"), indent=2)
ms = lambda us: "–" if us is None else f"{us / 1000:.2f}"
print(f"[{label}] {conns}/{n} connected in {connect_s} s; RSS per connection "
      + ", ".join(str(r['bytes_per_conn']) for r in replicas) + " B")
print(f"  topic: {received_topic}/{res['topic']['expected']} received, the last after {ms(topic_last)} ms; publish {ms(pub.get('publish_us'))} ms, recipients {pub.get('recipients')}")
print(f"  unicast: p50 {ms(lat['p50'])} p99 {ms(lat['p99'])} p99.9 {ms(lat['p999'])} max {ms(lat['max'])} ms over {total}; "
      f"lost {res['delivery']['lost']}, duplicated {res['delivery']['duplicated']}, seq gaps {res['delivery']['seq_gaps']}; failed publishes {res['publish']['failed']}")
print(f"  cpu (cores): {json.dumps(cpu)}")
PY
  OUTPUTS+=("$RESULTS/c100k-$label.json")
  [ "$failed" = 0 ] || { log "c100k-$label: $failed generator(s) failed (see $dir)"; FAILED=1; }
}

run_c100k() {
  local i port ports=() pids=() db_url
  need_redis
  # Every replica on the same database and Redis, per-user channels (the default routing).
  for i in $(seq 0 $((C1_REPLICAS - 1))); do
    port=$((PORT_BASE + 30 + i))
    if [ "$i" = 0 ]; then
      start_tidings "$port" redis
      db_url=$T_DB_URL
    else
      T_SHARED_DB="$db_url" start_tidings "$port" redis
    fi
    ports+=("$port"); pids+=("$T_PID")
  done
  C1_PORTS=("${ports[@]}") C1_PIDS=("${pids[@]}")
  c100k_run tidings-pg-redis tidings
  for i in "${pids[@]}"; do stop_tidings "$i"; done
  drop_tidings_db
  unset T_SHARED_DB

  # Nchan: one nginx, 8 workers (each with the same 20,000 files), SO_REUSEPORT so the kernel
  # spreads the connections evenly over them; /sub/<user> also listens on one shared channel.
  local mode="$C1_NCHAN_MODE" src peer="$WORK/nchan-c100k-peer"
  case "$mode" in
    memory) src=nginx.conf ;;
    redis) need_redis; src=nginx-redis.conf ;;
    redis-aof) start_redis_aof; src=nginx-redis.conf ;;
    *) die "BENCH_C100K_NCHAN_MODE must be memory, redis or redis-aof" ;;
  esac
  C1_NCHAN_TOPIC="r${RUNID}c-all"
  mkdir -p "$peer"
  cp "$PEER/start.sh" "$PEER/stop.sh" "$PEER/nginx.conf" "$PEER/nginx-redis.conf" "$peer/"
  [ "$mode" = redis-aof ] && cp "$AOF_PEER/start.sh" "$AOF_PEER/nginx-redis.conf" "$peer/"
  sed -i -e 's/^worker_processes .*/worker_processes     8;/' \
    -e 's/listen 127.0.0.1:${PORT} backlog=4096;/listen 127.0.0.1:${PORT} backlog=4096 reuseport;/' \
    -e "/location ~ \^\/sub\//,/}/ s/nchan_channel_id \$1;/nchan_channel_id \$1 $C1_NCHAN_TOPIC;/" \
    "$peer/$src"
  grep -q "nchan_channel_id \$1 $C1_NCHAN_TOPIC;" "$peer/$src" || die "could not add the shared channel to $src"
  local pidfile master
  pidfile="$("$peer/start.sh" "$N_PORT" "$([ "$mode" = memory ] && echo memory || echo redis)")"
  NCHAN_PORTS+=("$N_PORT")
  master="$(cat "$pidfile")"
  mapfile -t C1_PIDS < <(pgrep -P "$master")
  C1_PORTS=("$N_PORT")
  log "nchan up on $N_PORT ($mode; master $master, ${#C1_PIDS[@]} workers)"
  c100k_run "nchan-$mode" nchan
  stop_nchan "$N_PORT"
  stop_redis_aof
}

# -------------------------------------------------------------------- faces ---
# One Tidings per transport in turn, the same unicast load; then the MQTT bridge's rate.
run_faces() {
  local args=(--target tidings --url "http://127.0.0.1:$T_PORT_A" --users "$FC_USERS"
    --rate "$FC_RATE" --duration "$FC_DUR" "${CHECK[@]}")
  start_tidings "$T_PORT_A"
  bench "faces-sse-tidings-pg" faces "${args[@]}" --server-pid "$T_PID" --label tidings-sse \
    --transport sse
  stop_tidings "$T_PID"; drop_tidings_db

  local gport
  gport=$(free_port)
  T_GRPC_LISTEN="127.0.0.1:$gport" start_tidings "$T_PORT_A"
  bench "faces-grpc-tidings-pg" faces "${args[@]}" --server-pid "$T_PID" --label tidings-grpc \
    --transport grpc --grpc-url "http://127.0.0.1:$gport"
  stop_tidings "$T_PID"; drop_tidings_db

  start_mosquitto
  T_MQTT_URL="mqtt://127.0.0.1:$MQ_PORT" start_tidings "$T_PORT_A"
  bench "faces-mqtt-tidings-pg" faces "${args[@]}" --server-pid "$T_PID" --label tidings-mqtt \
    --transport mqtt --mqtt-url "mqtt://127.0.0.1:$MQ_PORT" --broker-pid "$MQ_PID" \
    --mqtt-users-per-connection "$MQ_PER_CONN"
  stop_tidings "$T_PID"; drop_tidings_db; stop_mosquitto

  if [ "$PG_OK" != 1 ]; then
    log "no PostgreSQL: the MQTT bridge's rate (its outbox is counted there) is skipped"
    return 0
  fi
  local sub label more
  for sub in no yes; do
    label=bridge-only more=()
    if [ "$sub" = yes ]; then label=with-subscribers more=(--subscribe); fi
    start_mosquitto
    T_MQTT_URL="mqtt://127.0.0.1:$MQ_PORT" start_tidings "$T_PORT_A"
    bench "mqtt-drain-$label" mqtt-drain --target tidings --url "http://127.0.0.1:$T_PORT_A" \
      --server-pid "$T_PID" --broker-pid "$MQ_PID" --label "$label" \
      --notifications "$DR_N" --users "$DR_USERS" --outbox-db "$T_DB_URL" \
      --mqtt-url "mqtt://127.0.0.1:$MQ_PORT" --mqtt-users-per-connection "$MQ_PER_CONN" \
      "${more[@]}" "${CHECK[@]}"
    stop_tidings "$T_PID"; drop_tidings_db; stop_mosquitto
  done
  # The bridge's own rate: the backlog is written while the broker is down, then the bench
  # starts it and times the drain from the first PUBACK, with nothing else running.
  mosquitto_prepare
  T_MQTT_URL="mqtt://127.0.0.1:$MQ_PORT" start_tidings "$T_PORT_A"
  bench "mqtt-drain-broker-after-backlog" mqtt-drain --target tidings \
    --url "http://127.0.0.1:$T_PORT_A" --server-pid "$T_PID" --label broker-after-backlog \
    --notifications "$DR_N" --users "$DR_USERS" --outbox-db "$T_DB_URL" \
    --broker-up-cmd "bash $MQ_UP $MOSQUITTO $MQ_DIR" "${CHECK[@]}"
  stop_tidings "$T_PID"; drop_tidings_db; stop_mosquitto
}

# ------------------------------------------------------------------ scaling ---
# A private Redis Cluster (three primaries, three replicas) on ports PORT_BASE+100..105, its
# bus ports on +200..205; sets CLUSTER_SEEDS and CLUSTER_PIDS.
CLUSTER_PIDS=()
start_redis_cluster() {
  local i port dir hosts=() seeds=()
  for i in 0 1 2 3 4 5; do
    port=$((PORT_BASE + 100 + i))
    dir="$WORK/redis-cluster/$i"
    mkdir -p "$dir"
    (cd "$dir" && exec redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
      --cluster-enabled yes --cluster-port $((PORT_BASE + 200 + i)) \
      --cluster-config-file nodes.conf --cluster-node-timeout 2000) >"$dir/log" 2>&1 &
    CLUSTER_PIDS+=($!)
    hosts+=("127.0.0.1:$port")
    seeds+=("redis://127.0.0.1:$port")
  done
  for i in 0 1 2 3 4 5; do
    for _ in $(seq 100); do
      [ "$(redis-cli -p $((PORT_BASE + 100 + i)) ping 2>/dev/null)" = PONG ] && break
      sleep 0.1
    done
  done
  redis-cli --cluster create "${hosts[@]}" --cluster-replicas 1 --cluster-yes >"$WORK/redis-cluster/create.log" 2>&1 ||
    { cat "$WORK/redis-cluster/create.log" >&2; die "redis-cli --cluster create failed"; }
  for _ in $(seq 300); do
    local ok=1
    for i in 0 1 2 3 4 5; do
      redis-cli -p $((PORT_BASE + 100 + i)) cluster info 2>/dev/null | grep -q 'cluster_state:ok' || ok=0
    done
    [ "$ok" = 1 ] && break
    sleep 0.1
  done
  CLUSTER_SEEDS="$(IFS=,; echo "${seeds[*]}")"
  log "redis cluster up: $CLUSTER_SEEDS"
}
stop_redis_cluster() {
  local p
  for p in "${CLUSTER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  CLUSTER_PIDS=()
}

# Sleeps until the epoch time $1 (fractional), if it is still ahead.
sleep_until() {
  local d
  d=$(echo "$1 - $(date +%s.%N)" | bc)
  if [ "$(echo "$d > 0" | bc)" = 1 ]; then sleep "$d"; fi
}
# utime + stime of PID, in clock ticks.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# A counter (no labels) from a replica's /metrics.
metric() { curl -sf "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 == m {print $2}' | tail -1; }

# One step: a publishing replica P (no connections) and R subscriber replicas on one database;
# R cross-replica runs at once, run i with users/R users on replica i and rate/R publishes/s
# through P. Measured over the window in which every run publishes: replica 1's CPU and bus
# events received, and the events received by every replica.
scaling_step() {
  local mode=$1 r=$2 routing=${1%%-*} i pids=() ports=() outs=() bpids=()
  local users=$((SC_USERS / r)) rate=$((SC_RATE / r))
  export TIDINGS__REDIS__ROUTING="$routing"
  T_REDIS_URL=""
  [ "${mode#*-}" = cluster ] && T_REDIS_URL="$CLUSTER_SEEDS"
  export T_REDIS_URL
  start_tidings $((PORT_BASE + 50)) redis
  local p=$T_PID db_url=$T_DB_URL
  for i in $(seq 1 "$r"); do
    T_SHARED_DB="$db_url" start_tidings $((PORT_BASE + 50 + i)) redis
    pids+=("$T_PID"); ports+=($((PORT_BASE + 50 + i)))
  done
  for i in $(seq 1 "$r"); do
    local out="$WORK/scaling-$mode-$r-$i"
    outs+=("$out")
    "$BENCH" cross-replica --target tidings --url "http://127.0.0.1:$((PORT_BASE + 50))" \
      --sub-url "http://127.0.0.1:${ports[$((i - 1))]}" --server-pid "${pids[$((i - 1))]}" \
      --users "$users" --rate "$rate" --duration "$SC_SECS" --transport sse --publishers 8 \
      --prefix "r${RUNID}s${mode}${r}x${i}-" --label "$mode-$r-$i" --json "$out.json" \
      >"$out.log" 2>&1 &
    bpids+=($!)
  done
  # When each run has connected its users and starts publishing (for SC_SECS from then).
  local -A started=()
  for _ in $(seq 1200); do
    local ready=1
    for i in "${outs[@]}"; do
      [ -n "${started[$i]:-}" ] && continue
      if grep -q 'publishing' "$i.log" 2>/dev/null; then started[$i]=$(date +%s.%N); else ready=0; fi
    done
    [ "$ready" = 1 ] && break
    sleep 0.1
  done
  # The window: from 2 s after the last run started publishing to 2 s before the first one
  # stops. The runs connect their users one after another, so they start seconds apart; a
  # window that outlasted the first run measured replica 1 after its users had left.
  local first last open close skew
  first=$(printf '%s\n' "${started[@]}" | sort -n | head -1)
  last=$(printf '%s\n' "${started[@]}" | sort -n | tail -1)
  skew=$(echo "$last - $first" | bc)
  open=$(echo "$last + 2" | bc)
  close=$(echo "$first + $SC_SECS - 2" | bc)
  [ "$(echo "$close - $open < 4" | bc)" = 1 ] &&
    log "scaling $mode R=$r: the runs started ${skew} s apart, which leaves a short window (raise BENCH_SCALING_SECS)"
  sleep_until "$open"
  local t0 c0 e0 all0=0 t1 c1 e1 all1=0 port
  t0=$(date +%s.%N); c0=$(cpu_ticks "${pids[0]}"); e0=$(metric "${ports[0]}" tidings_bus_events_received_total)
  for port in $((PORT_BASE + 50)) "${ports[@]}"; do
    all0=$(echo "$all0 + $(metric "$port" tidings_bus_events_received_total)" | bc); done
  sleep_until "$close"
  t1=$(date +%s.%N); c1=$(cpu_ticks "${pids[0]}"); e1=$(metric "${ports[0]}" tidings_bus_events_received_total)
  for port in $((PORT_BASE + 50)) "${ports[@]}"; do
    all1=$(echo "$all1 + $(metric "$port" tidings_bus_events_received_total)" | bc); done
  # Channels replica 1 holds while its users are connected.
  local subs_metric; subs_metric=$(metric "${ports[0]}" tidings_bus_subscriptions)
  local failed=0
  for i in "${bpids[@]}"; do wait "$i" || failed=$((failed + 1)); done
  python3 - "$mode" "$r" "$t0" "$t1" "$c0" "$c1" "$e0" "$e1" "$all0" "$all1" "$(getconf CLK_TCK)" \
    "$users" "$SC_RATE" "$failed" "$subs_metric" "$skew" >>"$WORK/scaling.jsonl" <<'PY'
import json, sys
mode, r, t0, t1, c0, c1, e0, e1, a0, a1, hz, users, rate, failed, subs, skew = sys.argv[1:]
dt = float(t1) - float(t0)
print(json.dumps({
    "mode": mode, "replicas": int(r), "window_s": round(dt, 2),
    "start_skew_s": round(float(skew), 2),
    "users_per_replica": int(users), "publish_rate": int(rate),
    "replica1_cpu_pct": round(100 * (float(c1) - float(c0)) / float(hz) / dt, 1),
    "replica1_events_per_s": round((float(e1) - float(e0)) / dt, 1),
    "cluster_events_per_s": round((float(a1) - float(a0)) / dt, 1),
    "replica1_subscriptions": float(subs or 0),
    "bench_runs_failed": int(failed),
}))
PY
  tail -1 "$WORK/scaling.jsonl" >&2
  for i in "${pids[@]}" "$p"; do stop_tidings "$i"; done
  drop_tidings_db
  unset T_SHARED_DB
}

run_scaling() {
  SC_USERS="${BENCH_SCALING_USERS:-$([ "$SMALL" = 1 ] && echo 200 || echo 2000)}"
  SC_RATE="${BENCH_SCALING_RATE:-$([ "$SMALL" = 1 ] && echo 100 || echo 500)}"
  SC_SECS="${BENCH_SCALING_SECS:-$([ "$SMALL" = 1 ] && echo 8 || echo 20)}"
  local max="${BENCH_SCALING_MAX:-4}" modes="${BENCH_SCALING_MODES:-user-single,user-cluster,shared-single}"
  local mode r
  command -v bc >/dev/null || die "bc not found"
  : >"$WORK/scaling.jsonl"
  for mode in ${modes//,/ }; do
    [ "${mode#*-}" = cluster ] && start_redis_cluster
    for r in $(seq 1 "$max"); do scaling_step "$mode" "$r"; done
    [ "${mode#*-}" = cluster ] && stop_redis_cluster
  done
  python3 - "$WORK/scaling.jsonl" "$RESULTS/scaling.json" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
json.dump({"scenario": "scaling", "steps": rows}, open(sys.argv[2], "w"), indent=2)
print("| mode | replicas | replica 1 CPU % | replica 1 events/s | cluster events/s | failed runs |")
print("|---|---|---|---|---|---|")
for s in rows:
    print(f"| {s['mode']} | {s['replicas']} | {s['replica1_cpu_pct']} | {s['replica1_events_per_s']} | {s['cluster_events_per_s']} | {s['bench_runs_failed']} |")
PY
}

run_baseline() {
  local port=$((PORT_BASE + 18)) pid
  "$TARGET_DIR/$PROFILE/actix-sse-baseline" "127.0.0.1:$port" >"$WORK/baseline.log" 2>&1 &
  pid=$!
  local rc
  for _ in $(seq 50); do
    # Up when a GET times out (its stream never ends) rather than being refused.
    rc=0; curl -s -o /dev/null --max-time 0.2 "http://127.0.0.1:$port/" || rc=$?
    [ "$rc" = 28 ] && break
    sleep 0.1
  done
  bench "idle-sse-actix-baseline" idle --target tidings --url "http://127.0.0.1:$port" \
    --connections "$IDLE_N" --transport sse --server-pid "$pid" --label actix-baseline
  kill -KILL "$pid" 2>/dev/null || true
}

START=$(date +%s)
case "$SCEN" in
  idle) run_idle ;;
  unicast) run_unicast ;;
  fanout) run_fanout ;;
  topic) run_topic ;;
  ingest) run_ingest ;;
  cross-replica) run_cross_replica ;;
  scaling) run_scaling ;;
  baseline) run_baseline ;;
  faces) run_faces ;;
  prefs) run_prefs ;;
  webpush) run_webpush ;;
  c100k) run_c100k ;;
  all) run_idle; run_baseline; run_unicast; run_fanout; run_topic; run_ingest; run_cross_replica; run_prefs ;;
esac

echo
echo "=== summary ($SCEN$([ "$SMALL" = 1 ] && echo ', small'); $(nproc) cores; $(($(date +%s) - START)) s)"
echo
if [ "${#OUTPUTS[@]}" -gt 0 ]; then
  "$BENCH" report "${OUTPUTS[@]}" | tee "$WORK/summary.md"
  if [ "$SCEN" = all ] && [ "$SMALL" != 1 ]; then
    cp "$WORK/summary.md" "$RESULTS/summary.md"
    python3 "$HERE/latency_svg.py" "$RESULTS" "$RESULTS/latency.svg" || log "chart failed"
  fi
fi
if [ "$FAILED" != 0 ]; then
  log "FAILED: a run lost, duplicated or misordered notifications, or requests failed (see above)"
  exit 1
fi
if [ "$SMALL" = 1 ] && [ -z "${BENCH_RESULTS:-}" ]; then
  log "done: nothing lost or duplicated"
else
  log "done; results in $RESULTS; logs in $WORK"
fi
