#!/bin/sh
# Make sure PostgreSQL (127.0.0.1:5432, user postgres) and Redis (127.0.0.1:6379) answer
# (CI_PG_PORT and CI_REDIS_PORT override the ports).
# Starts the installed Debian servers when they are down, installs them with apt-get when root and
# absent, and says what it did. Under CI=true a service that cannot be brought up is an error;
# otherwise the tests that need it are skipped with the reason.
set -u

PG_HOST=127.0.0.1
PG_PORT=${CI_PG_PORT:-5432}
REDIS_PORT=${CI_REDIS_PORT:-6379}
failed=""

say() { echo "services: $*"; }

is_root() { [ "$(id -u)" = 0 ]; }

pg_answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 2
    else
        python3 - "$PG_HOST" "$PG_PORT" <<'PY'
import socket, sys
socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close()
PY
    fi
}

redis_answers() {
    if command -v redis-cli >/dev/null 2>&1; then
        [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]
    else
        python3 - "$REDIS_PORT" <<'PY'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2)
s.sendall(b"PING\r\n")
sys.exit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
    fi
}

wait_for() {  # wait_for CHECK SECONDS
    i=0
    while [ "$i" -lt "$2" ]; do
        if "$1"; then return 0; fi
        sleep 1
        i=$((i + 1))
    done
    return 1
}

apt_install() {
    if ! is_root || ! command -v apt-get >/dev/null 2>&1; then
        say "cannot install $* (needs root and apt-get)"
        return 1
    fi
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

start_postgres() {
    if pg_answers; then
        say "PostgreSQL already answers on $PG_HOST:$PG_PORT"
        return 0
    fi
    if [ ! -d /etc/postgresql ] || [ -z "$(ls /etc/postgresql 2>/dev/null)" ]; then
        apt_install postgresql || return 1
    fi
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version (pg_ctlcluster $version main start)"
    if is_root; then
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
    else
        sudo -n pg_ctlcluster --skip-systemctl-redirect "$version" main start
    fi || return 1
    wait_for pg_answers 30 || return 1
    # the tests connect as postgres without a password from 127.0.0.1
    hba=$(ls /etc/postgresql/"$version"/main/pg_hba.conf 2>/dev/null)
    if [ -n "$hba" ] && is_root && ! grep -q "farm-tests" "$hba"; then
        say "allowing trust login for postgres from 127.0.0.1 in $hba (test machine)"
        sed -i '1i host all postgres 127.0.0.1/32 trust # farm-tests\nhost all postgres ::1/128 trust # farm-tests' "$hba"
        pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    fi
    say "PostgreSQL started"
}

start_redis() {
    if redis_answers; then
        say "Redis already answers on 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        apt_install redis-server || return 1
    fi
    mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
    say "starting Redis (redis-server --daemonize yes --port $REDIS_PORT)"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir /var/lib/redis --logfile "/var/log/redis/ci-$REDIS_PORT.log" || return 1
    wait_for redis_answers 15 || return 1
    say "Redis started"
}

start_postgres || failed="$failed PostgreSQL"
start_redis || failed="$failed Redis"

if [ -n "$failed" ]; then
    case "${CI:-}" in
        true|TRUE|1|yes)
            say "ERROR: could not start:$failed (CI=true: tests marked 'services' cannot run)"
            exit 1 ;;
        *)
            say "WARNING: could not start:$failed; tests marked 'services' will be skipped" ;;
    esac
fi
exit 0
