#!/usr/bin/env bash
# Run the docker-compose topology without Docker: N Tidings replicas on
# 127.0.0.1 behind Debian's nginx, sharing a Postgres database and Redis.
#
# Usage: scripts/cluster.sh COMMAND [N]
#
#   up          start what is not running, wait until every replica's /readyz
#               and nginx's /healthz answer 200 (non-zero + log tails if not)
#   down        stop nginx and every replica (SIGTERM, then SIGKILL)
#   status      pid and /readyz of each replica, nginx /healthz
#               (exit 0 only if all are up and answering 200)
#   restart N   SIGTERM replica N, wait for it to exit, start it, wait ready
#   kill N      SIGKILL replica N (a crash); bring it back with start N or up
#   stop N      SIGTERM replica N and wait (SIGKILL after the stop timeout)
#   start N     start replica N and wait until it is ready
#   env         print the cluster's settings as shell assignments
#               (eval "$(scripts/cluster.sh env)")
#
# Environment (defaults in brackets). `up` saves the effective values in
# $CLUSTER_DIR/cluster.conf; later commands reuse them unless set again.
#   TIDINGS_BIN              binary [$CARGO_TARGET_DIR/release/tidings, else
#                            .../debug/tidings; CARGO_TARGET_DIR=<repo>/target]
#   TIDINGS__DATABASE__URL   [postgres://postgres@127.0.0.1:5432/tidings_cluster]
#                            a missing Postgres database is created with psql
#                            (CLUSTER_CREATE_DB=0 to skip)
#   TIDINGS__REDIS__URL      [redis://127.0.0.1:6379]; checked with redis-cli
#                            when available (CLUSTER_CHECK_REDIS=0 to skip)
#   TIDINGS__AUTH__JWT_SECRET  [generated once into $CLUSTER_DIR/jwt.secret]
#   CLUSTER_DIR              state: pids, logs, nginx prefix [/tmp/tidings-cluster]
#   CLUSTER_PORT             nginx port on 127.0.0.1 [8080]
#   CLUSTER_BASE_PORT        replica N listens on BASE+N-1 [8081]
#   CLUSTER_GRPC_PORT        nginx's gRPC (HTTP/2) port; replica N serves gRPC on
#                            GRPC_PORT+N [BASE+REPLICAS: 8084, replicas 8085..8087]
#   CLUSTER_REPLICAS         number of replicas [3]
#   CLUSTER_START_TIMEOUT    seconds to wait for readiness [60]
#   CLUSTER_STOP_TIMEOUT     seconds between SIGTERM and SIGKILL
#                            [TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS + 5 = 15]
#   NGINX_BIN                [nginx from PATH, else /usr/sbin/nginx]
# Any other TIDINGS__* / RUST_LOG variable in the caller's environment reaches
# the replicas unchanged. Each replica runs in $CLUSTER_DIR/replicaN/ and logs
# to $CLUSTER_DIR/replicaN.log; nginx logs to $CLUSTER_DIR/nginx.log.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOST=127.0.0.1

die() {
    printf 'cluster: error: %s\n' "$*" >&2
    exit 1
}
say() { printf 'cluster: %s\n' "$*" >&2; }

usage() {
    awk '/^# Usage:/ { on = 1 } on && !/^#/ { exit } on { sub(/^# ?/, ""); print }' "${BASH_SOURCE[0]}" >&2
    exit 2
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# --------------------------------------------------------------------------
# Configuration: caller's environment, else what `up` saved, else defaults.

CLUSTER_DIR="${CLUSTER_DIR:-/tmp/tidings-cluster}"
CONF_FILE="$CLUSTER_DIR/cluster.conf"
SECRET_FILE="$CLUSTER_DIR/jwt.secret"
NGINX_PREFIX="$CLUSTER_DIR/nginx"
NGINX_PIDFILE="$CLUSTER_DIR/nginx.pid"
NGINX_LOG="$CLUSTER_DIR/nginx.log"

declare -A SAVED=()
if [[ -r $CONF_FILE ]]; then
    while IFS= read -r line || [[ -n $line ]]; do
        [[ $line == *=* ]] || continue
        SAVED["${line%%=*}"]="${line#*=}"
    done <"$CONF_FILE"
fi

# setting NAME DEFAULT: $NAME if set, else the saved value, else DEFAULT.
setting() {
    local name=$1 default=$2
    if [[ -n ${!name+x} ]]; then
        printf '%s' "${!name}"
    elif [[ -n ${SAVED[$name]+x} ]]; then
        printf '%s' "${SAVED[$name]}"
    else
        printf '%s' "$default"
    fi
}

PORT="$(setting CLUSTER_PORT 8080)"
BASE_PORT="$(setting CLUSTER_BASE_PORT 8081)"
REPLICAS="$(setting CLUSTER_REPLICAS 3)"
GRPC_PORT="$(setting CLUSTER_GRPC_PORT $((BASE_PORT + REPLICAS)))"
DB_URL="$(setting TIDINGS__DATABASE__URL postgres://postgres@127.0.0.1:5432/tidings_cluster)"
REDIS_URL="$(setting TIDINGS__REDIS__URL redis://127.0.0.1:6379)"
START_TIMEOUT="${CLUSTER_START_TIMEOUT:-60}"
STOP_TIMEOUT="${CLUSTER_STOP_TIMEOUT:-$((${TIDINGS__SERVER__SHUTDOWN_GRACE_SECONDS:-10} + 5))}"

for v in PORT BASE_PORT GRPC_PORT REPLICAS START_TIMEOUT STOP_TIMEOUT; do
    is_uint "${!v}" || die "$v must be a whole number, got '${!v}'"
done
((REPLICAS >= 1)) || die "CLUSTER_REPLICAS must be at least 1"
((PORT < 65536 && BASE_PORT + REPLICAS - 1 < 65536 && GRPC_PORT + REPLICAS < 65536)) || die "port out of range"
if ((PORT >= BASE_PORT && PORT < BASE_PORT + REPLICAS)); then
    die "CLUSTER_PORT $PORT collides with the replica ports $BASE_PORT..$((BASE_PORT + REPLICAS - 1))"
fi

if ((GRPC_PORT + REPLICAS >= BASE_PORT && GRPC_PORT < BASE_PORT + REPLICAS)) || ((PORT >= GRPC_PORT && PORT <= GRPC_PORT + REPLICAS)); then
    die "CLUSTER_GRPC_PORT $GRPC_PORT..$((GRPC_PORT + REPLICAS)) collides with the HTTP ports"
fi

replica_port() { echo $((BASE_PORT + $1 - 1)); }
replica_grpc_port() { echo $((GRPC_PORT + $1)); }
replica_pidfile() { echo "$CLUSTER_DIR/replica$1.pid"; }
replica_log() { echo "$CLUSTER_DIR/replica$1.log"; }

# Hide the password of a URL in messages.
redact() { sed -E 's#(//[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

resolve_bin() {
    local bin target
    bin="$(setting TIDINGS_BIN '')"
    if [[ -z $bin ]]; then
        target="${CARGO_TARGET_DIR:-$ROOT/target}"
        [[ $target == /* ]] || target="$ROOT/$target"
        bin="$target/release/tidings"
        [[ -x $bin ]] || bin="$target/debug/tidings"
    elif [[ $bin != /* ]]; then
        if [[ -e $bin ]]; then bin="$PWD/$bin"; else bin="$ROOT/$bin"; fi
    fi
    [[ -x $bin && -f $bin ]] || die "no executable at $bin (build it with 'cargo build --release --locked' or set TIDINGS_BIN)"
    printf '%s' "$bin"
}

resolve_nginx() {
    local n="${NGINX_BIN:-}"
    if [[ -z $n ]]; then
        n="$(command -v nginx || true)"
        [[ -n $n ]] || n=/usr/sbin/nginx
    fi
    [[ -x $n ]] || die "nginx not found (apt-get install nginx-light, or set NGINX_BIN)"
    printf '%s' "$n"
}

need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required"; }

# --------------------------------------------------------------------------
# Processes. A pid file holds "<pid> <start time>" so a recycled pid is never
# mistaken for ours (and never signalled).

proc_starttime() {
    local stat
    [[ -r /proc/$1/stat ]] || return 1
    stat="$(<"/proc/$1/stat")" || return 1
    stat="${stat##*) }"           # drop "pid (comm) "; field 3 comes first
    # shellcheck disable=SC2086  # split the remaining fields on purpose
    set -- $stat
    [[ $1 != Z && $1 != X ]] || return 1 # zombie: as good as dead
    printf '%s' "${20}"           # field 22: start time
}

# pid_of PIDFILE: prints the pid if that process is still running, else fails.
pid_of() {
    local pidfile=$1 pid start now
    [[ -s $pidfile ]] || return 1
    read -r pid start <"$pidfile" || true
    is_uint "${pid:-}" || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    if [[ -d /proc/$pid ]]; then
        now="$(proc_starttime "$pid")" || return 1
        [[ -z ${start:-} || $start == "$now" ]] || return 1
    fi
    printf '%s' "$pid"
}

# spawn PIDFILE LOG DIR CMD...: start CMD in its own session (it outlives this
# script and a Ctrl-C aimed at the caller), record its pid.
spawn() {
    local pidfile=$1 log=$2 dir=$3 pid="" start="" i
    shift 3
    rm -f "$pidfile" "$pidfile.new"
    local launcher=()
    command -v setsid >/dev/null 2>&1 && launcher=(setsid)
    (
        cd "$dir"
        # shellcheck disable=SC2016  # $$, $0 and $@ belong to the inner bash
        exec "${launcher[@]}" bash -c 'echo "$$" >"$0.new" && exec "$@"' "$pidfile" "$@"
    ) </dev/null >>"$log" 2>&1 &
    for ((i = 0; i < 50; i++)); do
        if [[ -s $pidfile.new ]]; then
            read -r pid <"$pidfile.new" || true
            [[ -n $pid ]] && break
        fi
        sleep 0.1
    done
    rm -f "$pidfile.new"
    is_uint "$pid" || die "could not start $* (see $log)"
    start="$(proc_starttime "$pid" || true)"
    printf '%s %s\n' "$pid" "$start" >"$pidfile"
}

# wait_gone PIDFILE NAME PID SIGNAL: wait for a signalled process to exit,
# escalating to SIGKILL after STOP_TIMEOUT seconds; then drop its pid file.
wait_gone() {
    local pidfile=$1 name=$2 pid=$3 sig=$4 deadline
    deadline=$((SECONDS + STOP_TIMEOUT))
    while pid_of "$pidfile" >/dev/null; do
        if ((SECONDS >= deadline)); then
            say "$name (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$((SECONDS + 5))
            sig=KILL
        fi
        sleep 0.1
    done
    rm -f "$pidfile"
    say "$name stopped (pid $pid, SIG$sig)"
}

# terminate PIDFILE NAME SIGNAL: signal the process if it runs, wait for it.
terminate() {
    local pidfile=$1 name=$2 sig=$3 pid
    if ! pid="$(pid_of "$pidfile")"; then
        rm -f "$pidfile"
        return 0
    fi
    kill "-$sig" "$pid" 2>/dev/null || true
    wait_gone "$pidfile" "$name" "$pid" "$sig"
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

http_code() {
    curl -s -o /dev/null --max-time 2 -w '%{http_code}' "$1" 2>/dev/null || true
}

# --------------------------------------------------------------------------
# Pieces.

prepare_dirs() {
    mkdir -p "$CLUSTER_DIR"
    # nginx workers run as an unprivileged user when nginx is started as root;
    # they must be able to reach the prefix.
    chmod 0755 "$CLUSTER_DIR"
}

save_conf() {
    {
        printf 'CLUSTER_PORT=%s\n' "$PORT"
        printf 'CLUSTER_BASE_PORT=%s\n' "$BASE_PORT"
        printf 'CLUSTER_GRPC_PORT=%s\n' "$GRPC_PORT"
        printf 'CLUSTER_REPLICAS=%s\n' "$REPLICAS"
        printf 'TIDINGS__DATABASE__URL=%s\n' "$DB_URL"
        printf 'TIDINGS__REDIS__URL=%s\n' "$REDIS_URL"
        printf 'TIDINGS_BIN=%s\n' "$BIN"
    } >"$CONF_FILE.new"
    chmod 0600 "$CONF_FILE.new"
    mv "$CONF_FILE.new" "$CONF_FILE"
}

load_secret() {
    if [[ -n ${TIDINGS__AUTH__JWT_SECRET:-} ]]; then
        SECRET=$TIDINGS__AUTH__JWT_SECRET
    elif [[ -s $SECRET_FILE ]]; then
        SECRET="$(<"$SECRET_FILE")"
        return 0
    else
        SECRET="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"
    fi
    (umask 077 && printf '%s\n' "$SECRET" >"$SECRET_FILE")
}

ensure_database() {
    local db admin exists
    case $DB_URL in
        postgres://* | postgresql://*) ;;
        *) return 0 ;;
    esac
    [[ ${CLUSTER_CREATE_DB:-1} == 1 ]] || return 0
    if ! command -v psql >/dev/null 2>&1; then
        say "psql not found; assuming the database of $(redact "$DB_URL") exists"
        return 0
    fi
    [[ $DB_URL =~ ^(postgres(ql)?://[^/?]*)/([^?]+)(\?.*)?$ ]] ||
        die "cannot find a database name in $(redact "$DB_URL")"
    db="${BASH_REMATCH[3]}"
    admin="${BASH_REMATCH[1]}/postgres${BASH_REMATCH[4]}"
    [[ $db =~ ^[A-Za-z0-9_]+$ ]] || die "database name '$db' must match [A-Za-z0-9_]+"
    exists="$(psql -X -q -v ON_ERROR_STOP=1 -d "$admin" -tAc \
        "SELECT 1 FROM pg_database WHERE datname = '$db'")" ||
        die "cannot reach Postgres at $(redact "$admin")"
    if [[ $exists != 1 ]]; then
        psql -X -q -v ON_ERROR_STOP=1 -d "$admin" -c "CREATE DATABASE \"$db\"" >/dev/null ||
            [[ "$(psql -X -q -d "$admin" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" == 1 ]] ||
            die "could not create database $db"
        say "created database $db"
    fi
}

check_redis() {
    [[ -n $REDIS_URL && ${CLUSTER_CHECK_REDIS:-1} == 1 ]] || return 0
    command -v redis-cli >/dev/null 2>&1 || return 0
    [[ "$(redis-cli -u "$REDIS_URL" ping 2>/dev/null || true)" == PONG ]] ||
        die "Redis does not answer at $(redact "$REDIS_URL") (start it, set TIDINGS__REDIS__URL, or CLUSTER_CHECK_REDIS=0)"
}

start_replica() {
    local n=$1 port grpc_port pidfile log pid
    port="$(replica_port "$n")"
    grpc_port="$(replica_grpc_port "$n")"
    pidfile="$(replica_pidfile "$n")"
    log="$(replica_log "$n")"
    if pid="$(pid_of "$pidfile")"; then
        say "replica $n already running (pid $pid, port $port)"
        return 0
    fi
    port_in_use "$port" && die "port $port is taken by a process this cluster did not start"
    port_in_use "$grpc_port" && die "port $grpc_port is taken by a process this cluster did not start"
    mkdir -p "$CLUSTER_DIR/replica$n"
    printf '\n=== %s starting replica %s on %s:%s\n' "$(date -u +%FT%TZ)" "$n" "$HOST" "$port" >>"$log"
    local envs=(
        "TIDINGS__SERVER__LISTEN=$HOST:$port"
        # The replicas' HTTP ports are consecutive, so the default gRPC port (HTTP + 1) would
        # be the next replica's: gRPC gets a range of its own, behind nginx's gRPC port.
        "TIDINGS__GRPC__LISTEN=$HOST:$grpc_port"
        "TIDINGS__DATABASE__URL=$DB_URL"
        "TIDINGS__AUTH__JWT_SECRET=$SECRET"
    )
    local unset=()
    if [[ -n $REDIS_URL ]]; then
        envs+=("TIDINGS__REDIS__URL=$REDIS_URL")
    else
        unset=(-u TIDINGS__REDIS__URL)
    fi
    spawn "$pidfile" "$log" "$CLUSTER_DIR/replica$n" env "${unset[@]}" "${envs[@]}" "$BIN" serve
    say "replica $n started (pid $(pid_of "$pidfile" || echo '?'), port $port, log $log)"
}

fail_with_log() {
    local log=$1
    shift
    printf 'cluster: error: %s\n' "$*" >&2
    if [[ -f $log ]]; then
        printf -- '----- last lines of %s -----\n' "$log" >&2
        tail -n 40 "$log" >&2
        printf -- '-----\n' >&2
    fi
    exit 1
}

wait_ready() {
    local n=$1 deadline=$2 url pidfile code=000
    url="http://$HOST:$(replica_port "$n")/readyz"
    pidfile="$(replica_pidfile "$n")"
    while :; do
        pid_of "$pidfile" >/dev/null ||
            fail_with_log "$(replica_log "$n")" "replica $n is not running"
        code="$(http_code "$url")"
        [[ $code == 200 ]] && return 0
        ((SECONDS < deadline)) ||
            fail_with_log "$(replica_log "$n")" "replica $n: $url answered $code, not 200, after ${START_TIMEOUT}s"
        sleep 0.2
    done
}

# write_nginx_conf DIR: the main config from deploy/ plus this cluster's
# tidings.d/ (what deploy/nginx-compose.d/ is for docker compose).
write_nginx_conf() {
    local conf_dir=$1 i
    mkdir -p "$conf_dir/tidings.d"
    chmod 0755 "$conf_dir" "$conf_dir/tidings.d"
    cp "$ROOT/deploy/nginx.conf" "$conf_dir/nginx.conf"
    {
        echo "# Written by scripts/cluster.sh; see deploy/nginx-compose.d/upstream.conf."
        echo "upstream tidings {"
        echo "    least_conn;"
        echo "    zone tidings 256k;"
        for ((i = 1; i <= REPLICAS; i++)); do
            echo "    server $HOST:$(replica_port "$i") max_fails=1 fail_timeout=5s;"
        done
        # The same replicas again as backups that are never marked failed: see
        # deploy/nginx-compose.d/upstream.conf (a rolling restart faster than
        # fail_timeout must not leave nginx with "no live upstreams").
        for ((i = 1; i <= REPLICAS; i++)); do
            echo "    server $HOST:$(replica_port "$i") backup max_fails=0;"
        done
        echo "    keepalive 32;"
        echo "    keepalive_timeout 4s;"
        echo "}"
        # SockJS sessions by their id: see deploy/nginx-compose.d/upstream.conf.
        echo "upstream tidings_sockjs {"
        echo "    hash \$sockjs_session consistent;"
        echo "    zone tidings_sockjs 256k;"
        for ((i = 1; i <= REPLICAS; i++)); do
            echo "    server $HOST:$(replica_port "$i") max_fails=1 fail_timeout=5s;"
        done
        echo "    keepalive 32;"
        echo "    keepalive_timeout 4s;"
        echo "}"
        echo "upstream tidings_grpc {"
        echo "    least_conn;"
        echo "    zone tidings_grpc 256k;"
        for ((i = 1; i <= REPLICAS; i++)); do
            echo "    server $HOST:$(replica_grpc_port "$i") max_fails=1 fail_timeout=5s;"
        done
        for ((i = 1; i <= REPLICAS; i++)); do
            echo "    server $HOST:$(replica_grpc_port "$i") backup max_fails=0;"
        done
        echo "    keepalive 32;"
        echo "}"
    } >"$conf_dir/tidings.d/upstream.conf"
    echo "listen $HOST:$PORT;" >"$conf_dir/tidings.d/listen.conf"
    echo "listen $HOST:$GRPC_PORT http2;" >"$conf_dir/tidings.d/grpc-listen.conf"
}

nginx_args() { printf '%s\n' -p "$NGINX_PREFIX/" -c "$NGINX_PREFIX/conf/nginx.conf" -e stderr; }

start_nginx() {
    local nginx args out pid conf="$NGINX_PREFIX/conf"
    nginx="$(resolve_nginx)"
    mkdir -p "$NGINX_PREFIX"
    chmod 0755 "$NGINX_PREFIX"
    rm -rf "$conf.new"
    write_nginx_conf "$conf.new"
    if pid="$(pid_of "$NGINX_PIDFILE")" && diff -r "$conf" "$conf.new" >/dev/null 2>&1; then
        # Unchanged: no reload, which would end open streams after
        # worker_shutdown_timeout.
        rm -rf "$conf.new"
        say "nginx already running (pid $pid, port $PORT)"
        return 0
    fi
    out="$("$nginx" -t -q -p "$NGINX_PREFIX/" -c "$conf.new/nginx.conf" -e stderr 2>&1)" ||
        die "nginx -t failed:"$'\n'"$out"
    rm -rf "$conf"
    mv "$conf.new" "$conf"
    mapfile -t args < <(nginx_args)
    if pid="$(pid_of "$NGINX_PIDFILE")"; then
        kill -HUP "$pid"
        say "nginx reloaded with a changed config (pid $pid, port $PORT)"
        return 0
    fi
    port_in_use "$PORT" && die "port $PORT is taken by a process this cluster did not start"
    port_in_use "$GRPC_PORT" && die "port $GRPC_PORT is taken by a process this cluster did not start"
    printf '\n=== %s starting nginx on %s:%s\n' "$(date -u +%FT%TZ)" "$HOST" "$PORT" >>"$NGINX_LOG"
    spawn "$NGINX_PIDFILE" "$NGINX_LOG" "$NGINX_PREFIX" "$nginx" "${args[@]}" -g 'daemon off;'
    say "nginx started (pid $(pid_of "$NGINX_PIDFILE" || echo '?'), port $PORT, log $NGINX_LOG)"
}

wait_nginx() {
    local deadline=$1 url="http://$HOST:$PORT/healthz" code=000
    while :; do
        pid_of "$NGINX_PIDFILE" >/dev/null || fail_with_log "$NGINX_LOG" "nginx is not running"
        code="$(http_code "$url")"
        [[ $code == 200 ]] && return 0
        ((SECONDS < deadline)) ||
            fail_with_log "$NGINX_LOG" "nginx: $url answered $code, not 200, after ${START_TIMEOUT}s"
        sleep 0.2
    done
}

replica_arg() {
    [[ -n ${1:-} ]] || usage
    if ! is_uint "$1" || (($1 < 1 || $1 > REPLICAS)); then
        die "replica must be 1..$REPLICAS, got '$1'"
    fi
}

raise_nofile() { ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; }

# --------------------------------------------------------------------------
# Commands.

cmd_up() {
    local i deadline
    need curl
    BIN="$(resolve_bin)"
    resolve_nginx >/dev/null
    prepare_dirs
    save_conf
    load_secret
    ensure_database
    check_redis
    raise_nofile
    for ((i = 1; i <= REPLICAS; i++)); do start_replica "$i"; done
    start_nginx
    deadline=$((SECONDS + START_TIMEOUT))
    for ((i = 1; i <= REPLICAS; i++)); do wait_ready "$i" "$deadline"; done
    wait_nginx "$deadline"
    say "up: http://$HOST:$PORT ($REPLICAS replicas, state in $CLUSTER_DIR)"
    cmd_status
}

cmd_down() {
    local f n pid pids=() files=()
    [[ -d $CLUSTER_DIR ]] || return 0
    terminate "$NGINX_PIDFILE" nginx TERM
    # SIGTERM every replica first so they drain in parallel, then wait.
    for f in "$CLUSTER_DIR"/replica*.pid; do
        [[ -e $f ]] || continue
        if pid="$(pid_of "$f")"; then
            kill -TERM "$pid" 2>/dev/null || true
            files+=("$f")
            pids+=("$pid")
        else
            rm -f "$f"
        fi
    done
    for n in "${!files[@]}"; do
        f="${files[$n]##*/replica}"
        wait_gone "${files[$n]}" "replica ${f%.pid}" "${pids[$n]}" TERM
    done
    say "down"
}

cmd_status() {
    local i pid code ok=0 url
    for ((i = 1; i <= REPLICAS; i++)); do
        url="http://$HOST:$(replica_port "$i")"
        if pid="$(pid_of "$(replica_pidfile "$i")")"; then
            code="$(http_code "$url/readyz")"
        else
            pid=-
            code=---
        fi
        [[ $pid != - && $code == 200 ]] || ok=1
        printf 'replica %-3s pid %-8s %-24s readyz %s\n' "$i" "$pid" "$url" "$code"
    done
    url="http://$HOST:$PORT"
    if pid="$(pid_of "$NGINX_PIDFILE")"; then
        code="$(http_code "$url/healthz")"
    else
        pid=-
        code=---
    fi
    [[ $pid != - && $code == 200 ]] || ok=1
    printf 'nginx       pid %-8s %-24s healthz %s\n' "$pid" "$url" "$code"
    return "$ok"
}

cmd_start() {
    replica_arg "${1:-}"
    need curl
    BIN="$(resolve_bin)"
    prepare_dirs
    load_secret
    raise_nofile
    start_replica "$1"
    wait_ready "$1" $((SECONDS + START_TIMEOUT))
    say "replica $1 ready"
}

cmd_stop() {
    replica_arg "${1:-}"
    terminate "$(replica_pidfile "$1")" "replica $1" TERM
}

cmd_restart() {
    replica_arg "${1:-}"
    BIN="$(resolve_bin)" # fail before stopping anything
    cmd_stop "$1"
    cmd_start "$1"
}

cmd_kill() {
    replica_arg "${1:-}"
    terminate "$(replica_pidfile "$1")" "replica $1" KILL
}

cmd_env() {
    local i urls=()
    [[ -s $SECRET_FILE ]] || die "no cluster state in $CLUSTER_DIR (run up first)"
    for ((i = 1; i <= REPLICAS; i++)); do urls+=("http://$HOST:$(replica_port "$i")"); done
    printf 'CLUSTER_DIR=%q\n' "$CLUSTER_DIR"
    printf 'TIDINGS_URL=%q\n' "http://$HOST:$PORT"
    printf 'TIDINGS_GRPC_URL=%q\n' "http://$HOST:$GRPC_PORT"
    printf 'TIDINGS_REPLICA_URLS=%q\n' "${urls[*]}"
    printf 'TIDINGS__AUTH__JWT_SECRET=%q\n' "$(<"$SECRET_FILE")"
    printf 'TIDINGS__DATABASE__URL=%q\n' "$DB_URL"
    printf 'TIDINGS__REDIS__URL=%q\n' "$REDIS_URL"
}

cmd="${1:-}"
[[ $# -gt 0 ]] && shift
case $cmd in
    up | down | status | env)
        [[ $# -eq 0 ]] || usage
        "cmd_$cmd"
        ;;
    restart | kill | stop | start)
        [[ $# -eq 1 ]] || usage
        "cmd_$cmd" "$1"
        ;;
    -h | --help | help) usage ;;
    *) usage ;;
esac
