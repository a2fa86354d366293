#!/usr/bin/env bash
# Install (if missing), start (if not answering) and check the services Backfill
# needs, on a Debian/Ubuntu machine without containers or systemd:
#   PostgreSQL  127.0.0.1:5432  user postgres, trust auth over TCP
#   Redis       127.0.0.1:6379  no persistence
#   RabbitMQ    127.0.0.1:5672  guest/guest (default; guest may log in from localhost)
#
# Usage: bash deploy/install-services.sh [--check | --no-install] [--configure-trust]
#   (no flag)          apt-get install what is missing, start what is not answering, wait, report
#   --no-install       same, but never run apt-get (CI: services are preinstalled)
#   --check            only check and report; install, start and change nothing
#   --configure-trust  if psql -h 127.0.0.1 -U postgres needs a password, insert
#                      "host all all 127.0.0.1/32 trust" as the first rule of
#                      pg_hba.conf (backup kept next to it) and reload PostgreSQL
#   -h, --help         show this help
#
# Prints one line per service: up (was already answering), started (started by
# this run), or FAILED with the fix. Exit status: 0 all up, 1 something is not
# up, 2 bad usage. Idempotent: when everything already answers it only reports.
# Needs root (or sudo) only for apt-get, pg_ctlcluster, rabbitmq-server and
# --configure-trust. Env: BACKFILL_WAIT_SECS (default 60) = wait per service.
set -euo pipefail

readonly HOST=127.0.0.1
readonly PG_PORT=5432
readonly REDIS_PORT=6379
readonly AMQP_PORT=5672
readonly TRUST_LINE='host all all 127.0.0.1/32 trust'
WAIT_SECS=${BACKFILL_WAIT_SECS:-60}
SELF="bash ${BASH_SOURCE[0]}"

CHECK=0
NO_INSTALL=0
CONFIGURE_TRUST=0

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($#)); do
  case $1 in
    --check) CHECK=1 ;;
    --no-install) NO_INSTALL=1 ;;
    --configure-trust) CONFIGURE_TRUST=1 ;;
    -h | --help) usage; exit 0 ;;
    *) printf 'unknown option: %s\n\n' "$1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [[ ! $WAIT_SECS =~ ^[0-9]+$ ]]; then
  echo "BACKFILL_WAIT_SECS must be a number of seconds" >&2
  exit 2
fi

# rabbitmq-*, pg_ctlcluster helpers live in sbin, which is not on a normal user's PATH.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

SERVICES=(postgres redis rabbitmq)
declare -A STATUS=() DETAIL=() PKG=([postgres]=postgresql [redis]=redis-server [rabbitmq]=rabbitmq-server)
declare -A ADDR=([postgres]="$HOST:$PG_PORT" [redis]="$HOST:$REDIS_PORT" [rabbitmq]="$HOST:$AMQP_PORT")
declare -A START_CMD=(
  [redis]="redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save \"\" --appendonly no"
  [rabbitmq]="rabbitmq-server -detached"
)

log() { printf '==> %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
is_root() { [[ $EUID -eq 0 ]]; }

# Run a command as root (directly, or through sudo when not root).
as_root() {
  if is_root; then
    "$@"
  elif have sudo; then
    sudo -- "$@"
  else
    echo "needs root and sudo is not available: $1" >&2
    return 1
  fi
}

# First non-empty line of some command output, trimmed, for one-line reports.
first_line() { printf '%s\n' "$1" | sed -e 's/^[[:space:]]*//' -e '/^$/d' | head -n 1; }

tcp_open() { timeout 2 bash -c ': <"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null; }

# ---------------------------------------------------------------- PostgreSQL

# Version of the "main" cluster: the one on port 5432 if pg_lsclusters knows it,
# else the highest version in /etc/postgresql (what `ls /etc/postgresql` gives
# on a machine with a single version).
PG_VER=""
pick_pg_version() {
  PG_VER=""
  if have pg_lsclusters; then
    PG_VER=$(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$2 == "main" && $3 == p {print $1}' | sort -V | tail -n 1) || PG_VER=""
  fi
  if [[ -z $PG_VER && -d /etc/postgresql ]]; then
    PG_VER=$(ls /etc/postgresql | sort -V | tail -n 1) || PG_VER=""
  fi
}

pg_installed() {
  have pg_ctlcluster && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

probe_postgres() {
  if have pg_isready; then
    pg_isready -q -h "$HOST" -p "$PG_PORT" -t 2 >/dev/null 2>&1
  else
    tcp_open "$HOST" "$PG_PORT"
  fi
}

# psql as postgres over TCP with no password available at all: succeeds only
# with trust auth. Sets PG_SERVER_VERSION or PG_AUTH_ERR. 0 ok, 1 fails, 2 no psql.
PG_SERVER_VERSION=""
PG_AUTH_ERR=""
pg_trust_check() {
  PG_SERVER_VERSION=""
  PG_AUTH_ERR=""
  have psql || return 2
  local out errfile rc=0
  errfile=$(mktemp)
  # A missing PGPASSFILE is silently ignored by libpq (/dev/null would warn).
  out=$(env -u PGPASSWORD -u PGSERVICE -u PGOPTIONS PGPASSFILE=/nonexistent/backfill-no-pgpass \
    PGCONNECT_TIMEOUT=5 psql -X -w -A -t -h "$HOST" -p "$PG_PORT" -U postgres -d postgres \
    -c "select current_setting('server_version')" 2>"$errfile") || rc=$?
  if ((rc == 0)); then
    PG_SERVER_VERSION=$(first_line "$out")
  else
    PG_AUTH_ERR=$(first_line "$(cat -- "$errfile")")
    [[ -n $PG_AUTH_ERR ]] || PG_AUTH_ERR="psql exited with status $rc"
  fi
  rm -f -- "$errfile"
  ((rc == 0)) && return 0
  return 1
}

pg_hba_path() { printf '/etc/postgresql/%s/main/pg_hba.conf' "$PG_VER"; }
pg_reload_cmd() { printf 'pg_ctlcluster --skip-systemctl-redirect %s main reload' "${PG_VER:-<version>}"; }

# --configure-trust: put TRUST_LINE first in pg_hba.conf (unless it already is
# the first rule), keep a backup, reload. Prints what it changed.
configure_trust() {
  local hba first backup stamp
  hba=$(pg_hba_path)
  if [[ -z $PG_VER ]] || ! as_root test -f "$hba"; then
    echo "postgres: --configure-trust: no pg_hba.conf found under /etc/postgresql/*/main (is this PostgreSQL managed by postgresql-common?)" >&2
    return 1
  fi
  first=$(as_root awk '!/^[[:space:]]*(#|$)/ {print; exit}' "$hba") || return 1
  first=$(printf '%s' "$first" | tr -s '[:space:]' ' ' | sed 's/ $//')
  if [[ $first == "$TRUST_LINE" ]]; then
    echo "postgres: --configure-trust: $hba already starts with '$TRUST_LINE'; not changed"
  else
    stamp=$(date +%Y%m%d%H%M%S)
    backup="$hba.backfill-$stamp.bak"
    as_root cp -p -- "$hba" "$backup" || return 1
    # Rewrite in place (keeps owner and mode): comment + rule, then the old content.
    as_root bash -c 'set -e; { printf "%s\n" "$3" "$4"; cat -- "$2"; } >"$1"' _ \
      "$hba" "$backup" "# added by deploy/install-services.sh --configure-trust $stamp" "$TRUST_LINE" || return 1
    echo "postgres: --configure-trust: inserted '$TRUST_LINE' as the first rule of $hba (previous file: $backup)"
  fi
  log "reloading PostgreSQL $PG_VER/main"
  as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main reload >&2 || return 1
  echo "postgres: --configure-trust: reloaded cluster $PG_VER/main"
  sleep 1
}

# -------------------------------------------------------------------- Redis

REDIS_REPLY=""
probe_redis() {
  REDIS_REPLY=""
  if have redis-cli; then
    REDIS_REPLY=$(timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" ping 2>/dev/null) || true
  else
    REDIS_REPLY=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$1/$2"; printf "PING\r\n" >&3; IFS= read -r l <&3; printf "%s" "${l#+}"' \
      _ "$HOST" "$REDIS_PORT" 2>/dev/null) || true
  fi
  REDIS_REPLY=$(first_line "${REDIS_REPLY//$'\r'/}")
  [[ $REDIS_REPLY == PONG ]]
}

redis_version() {
  have redis-cli || return 0
  timeout 3 redis-cli -h "$HOST" -p "$REDIS_PORT" info server 2>/dev/null |
    tr -d '\r' | awk -F: '$1 == "redis_version" {print $2}' || true
}

# ----------------------------------------------------------------- RabbitMQ

# Answering = the AMQP port accepts connections and, where we can run it (root
# or the rabbitmq user), `rabbitmq-diagnostics -q ping` succeeds. Without
# permission to run the CLI the TCP check on 5672 is the fallback.
RABBIT_VIA=""
can_run_rabbit_cli() { have rabbitmq-diagnostics && { is_root || [[ $(id -un) == rabbitmq ]]; }; }
probe_rabbitmq() {
  RABBIT_VIA=""
  tcp_open "$HOST" "$AMQP_PORT" || return 1
  if can_run_rabbit_cli; then
    timeout 20 rabbitmq-diagnostics -q ping >/dev/null 2>&1 || return 1
    RABBIT_VIA="rabbitmq-diagnostics ping ok"
  else
    RABBIT_VIA="AMQP port open; rabbitmq-diagnostics not runnable as $(id -un), TCP check only"
  fi
}

rabbit_version() {
  can_run_rabbit_cli || return 0
  timeout 20 rabbitmq-diagnostics -q server_version 2>/dev/null | tail -n 1 || true
}

# ------------------------------------------------------------------ helpers

installed() {
  case $1 in
    postgres) pg_installed ;;
    redis) have redis-server && have redis-cli ;;
    rabbitmq) have rabbitmq-server && have rabbitmq-diagnostics ;;
  esac
}

probe() { "probe_$1"; }

wait_for() {
  local svc=$1 deadline=$((SECONDS + WAIT_SECS))
  while :; do
    probe "$svc" && return 0
    ((SECONDS >= deadline)) && return 1
    sleep 1
  done
}

# $1 = version string, $2 = minimum "major.minor", prints a warning if older.
version_warning() {
  local have_v=$1 need=$2 name=$3
  [[ -n $have_v ]] || return 0
  local v=${have_v%% *}
  if [[ $(printf '%s\n%s\n' "$need" "$v" | sort -V | head -n 1) != "$need" ]]; then
    printf '; WARNING: Backfill expects %s >= %s' "$name" "$need"
  fi
}

not_answering_fix() {
  case $1 in
    postgres)
      printf 'check `pg_lsclusters` (port 5432, listen_addresses must include 127.0.0.1) and /var/log/postgresql/postgresql-%s-main.log; start: pg_ctlcluster --skip-systemctl-redirect %s main start' \
        "${PG_VER:-<version>}" "${PG_VER:-<version>}"
      ;;
    redis)
      if [[ -n $REDIS_REPLY ]]; then
        printf 'something answers on 6379 but replied "%s" instead of PONG (password set?); Backfill expects a Redis without auth' "$REDIS_REPLY"
      else
        printf "check that nothing else holds port 6379 (ss -ltnp 'sport = :6379'); start: %s" "${START_CMD[redis]}"
      fi
      ;;
    rabbitmq)
      printf 'see /var/log/rabbitmq/ (rabbit@%s.log, startup_err); the host name must resolve (getent hosts %s); `rabbitmqctl status` shows a half-started node; start: rabbitmq-server -detached' \
        "$(hostname -s 2>/dev/null || echo HOST)" "$(hostname -s 2>/dev/null || echo HOST)"
      ;;
  esac
}

# ---------------------------------------------------------------------- main

pick_pg_version
if ((CHECK && CONFIGURE_TRUST)); then
  log "--check: ignoring --configure-trust (nothing is changed in check mode)"
fi

# 1. What answers already?
declare -A WAS_UP=()
for svc in "${SERVICES[@]}"; do
  if probe "$svc"; then WAS_UP[$svc]=1; else WAS_UP[$svc]=0; fi
done

# 2. Install what is missing (only for services that do not answer).
if ((!CHECK)); then
  missing=()
  for svc in "${SERVICES[@]}"; do
    ((WAS_UP[$svc])) && continue
    installed "$svc" || missing+=("${PKG[$svc]}")
  done
  if ((${#missing[@]})); then
    if ((NO_INSTALL)); then
      log "--no-install: not installing ${missing[*]}"
    elif ! have apt-get; then
      log "apt-get not found; cannot install ${missing[*]}"
    else
      log "installing ${missing[*]} (apt-get)"
      if as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        pick_pg_version
      else
        log "apt-get install ${missing[*]} failed"
      fi
    fi
  fi
fi

# 3. Start what does not answer (all at once), 4. then wait for each.
declare -A STARTED=() START_ERR=()
if ((!CHECK)); then
  for svc in "${SERVICES[@]}"; do
    ((WAS_UP[$svc])) && continue
    # A probe may have become true in the meantime (e.g. apt's postinst started it).
    if probe "$svc"; then WAS_UP[$svc]=1; continue; fi
    installed "$svc" || continue
    out=""
    case $svc in
      postgres)
        if [[ -z $PG_VER || ! -d /etc/postgresql/$PG_VER/main ]]; then
          START_ERR[$svc]="no cluster /etc/postgresql/<version>/main; create one: pg_createcluster <version> main"
          continue
        fi
        log "starting PostgreSQL $PG_VER/main: pg_ctlcluster --skip-systemctl-redirect $PG_VER main start"
        out=$(as_root pg_ctlcluster --skip-systemctl-redirect "$PG_VER" main start 2>&1) || START_ERR[$svc]=$(first_line "$out")
        ;;
      redis)
        log "starting Redis: ${START_CMD[redis]}"
        out=$(redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no 2>&1) ||
          START_ERR[$svc]=$(first_line "$out")
        ;;
      rabbitmq)
        log "starting RabbitMQ: ${START_CMD[rabbitmq]}"
        out=$(as_root rabbitmq-server -detached 2>&1) || START_ERR[$svc]=$(first_line "$out")
        ;;
    esac
    STARTED[$svc]=1
  done
  for svc in "${SERVICES[@]}"; do
    ((${STARTED[$svc]:-0})) || continue
    if [[ -n ${START_ERR[$svc]:-} ]]; then
      # The start command failed; one quick look, no long wait.
      log "$svc: start command failed: ${START_ERR[$svc]}"
      probe "$svc" && STATUS[$svc]=started
      continue
    fi
    log "waiting up to ${WAIT_SECS}s for $svc on ${ADDR[$svc]}"
    if wait_for "$svc"; then
      STATUS[$svc]=started
    fi
  done
fi

# 5. Classify.
for svc in "${SERVICES[@]}"; do
  if ((WAS_UP[$svc])); then
    STATUS[$svc]=up
  elif [[ ${STATUS[$svc]:-} != started ]]; then
    STATUS[$svc]=FAILED
    if ((CHECK)); then
      if installed "$svc"; then
        DETAIL[$svc]="not answering on ${ADDR[$svc]}; fix: $SELF --no-install (starts it), or: $(not_answering_fix "$svc")"
      else
        DETAIL[$svc]="not answering on ${ADDR[$svc]} and not installed; fix: $SELF (installs with apt-get and starts it)"
      fi
    elif ! installed "$svc"; then
      if ((NO_INSTALL)); then
        DETAIL[$svc]="not installed; fix: apt-get install ${PKG[$svc]}, or run $SELF without --no-install"
      else
        DETAIL[$svc]="not installed and apt-get install ${PKG[$svc]} failed (see output above); fix: install it (as root: apt-get install ${PKG[$svc]}) and re-run"
      fi
    elif [[ -n ${START_ERR[$svc]:-} ]]; then
      DETAIL[$svc]="start failed (${START_ERR[$svc]%.}); fix: $(not_answering_fix "$svc")"
    else
      DETAIL[$svc]="started but not answering on ${ADDR[$svc]} after ${WAIT_SECS}s; fix: $(not_answering_fix "$svc")"
    fi
  fi
done

# 6. PostgreSQL must accept user postgres over TCP without a password.
if [[ ${STATUS[postgres]} != FAILED ]]; then
  rc=0
  pg_trust_check || rc=$?
  if ((rc == 1 && CONFIGURE_TRUST && !CHECK)); then
    if configure_trust; then
      rc=0
      pg_trust_check || rc=$?
    else
      log "--configure-trust could not change pg_hba.conf"
    fi
  fi
  case $rc in
    0)
      DETAIL[postgres]="${ADDR[postgres]}, PostgreSQL ${PG_SERVER_VERSION%% *}, trust auth for postgres ok$(version_warning "$PG_SERVER_VERSION" 15 PostgreSQL)"
      ;;
    2)
      DETAIL[postgres]="${ADDR[postgres]}, trust auth not verified (psql not installed)"
      ;;
    *)
      STATUS[postgres]=FAILED
      DETAIL[postgres]="answers on ${ADDR[postgres]} but 'psql -h 127.0.0.1 -U postgres' without a password fails (${PG_AUTH_ERR}); fix: add '$TRUST_LINE' as the FIRST rule of $(pg_hba_path) (rules match top-down, so an md5/scram-sha-256 line for 127.0.0.1 above it wins), then run: $(pg_reload_cmd); or re-run with --configure-trust to do exactly that"
      ;;
  esac
fi

if [[ ${STATUS[redis]} != FAILED ]]; then
  v=$(redis_version)
  DETAIL[redis]="${ADDR[redis]}, PONG${v:+, Redis $v}$(version_warning "$v" 7 Redis)"
fi

if [[ ${STATUS[rabbitmq]} != FAILED ]]; then
  v=$(rabbit_version)
  DETAIL[rabbitmq]="${ADDR[rabbitmq]}, ${RABBIT_VIA}${v:+, RabbitMQ $v}$(version_warning "$v" 3.10 RabbitMQ)"
  # A node short of disk or memory answers but blocks every publisher, which
  # looks like a hang to whoever publishes: refuse it here, naming the alarm.
  if can_run_rabbit_cli && ! alarms=$(timeout 20 rabbitmq-diagnostics -q check_local_alarms 2>&1); then
    STATUS[rabbitmq]=FAILED
    DETAIL[rabbitmq]="${ADDR[rabbitmq]} answers but is under a resource alarm ($(echo "$alarms" | grep -i alarm | head -n 1 | tr -d '\n')), so it blocks every publisher: free disk space where it keeps its data (df -h /var/lib/rabbitmq; the limit is disk_free_limit) or memory, then run this again"
  fi
fi

# 7. Report: one line per service.
rc=0
for svc in "${SERVICES[@]}"; do
  printf '%-9s %-8s %s\n' "$svc" "${STATUS[$svc]}" "${DETAIL[$svc]:-}"
  [[ ${STATUS[$svc]} == FAILED ]] && rc=1
done
exit "$rc"
