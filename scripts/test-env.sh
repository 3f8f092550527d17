#!/usr/bin/env bash
# test-env.sh — a private containerd and three private loopback registries for tests
# (plain, basic auth, and bearer-token auth with its own token server).
#
# Usage: scripts/test-env.sh start|stop|status|env [DIR]
#
#   DIR defaults to ${LM_TEST_ENV:-/tmp/lm-test-env}. Everything lives under it:
#     DIR/containerd/config.toml   containerd config (version 2), regenerated on start
#     DIR/containerd/{root,state}  containerd root and state directories
#     DIR/containerd/containerd.sock        gRPC socket (ttrpc socket next to it)
#     DIR/containerd.log, DIR/containerd.pid
#     DIR/registry/{config.yml,data}        plain registry on 127.0.0.1:$LM_REGISTRY_PORT (5111)
#     DIR/registry.log, DIR/registry.pid
#     DIR/auth-registry/{config.yml,htpasswd,data}
#                                           registry with htpasswd basic auth on
#                                           127.0.0.1:$LM_AUTH_REGISTRY_PORT (5112),
#                                           user "lmuser", password "lmpass"
#     DIR/auth-registry.log, DIR/auth-registry.pid
#     DIR/token-server/{token.key,token.crt}
#                                           token issuer (scripts/registry-token-server.py)
#                                           on 127.0.0.1:$LM_TOKEN_SERVER_PORT (5114), realm
#                                           http://127.0.0.1:PORT/token, same user/password
#                                           as the auth registry; its ES256 key and
#                                           self-signed certificate are made on its first
#                                           start and kept
#     DIR/token-server.log, DIR/token-server.pid
#     DIR/token-registry/{config.yml,data}  registry with Docker bearer-token auth (service
#                                           "lm-token-registry", issuer "lm-test-issuer",
#                                           rootcertbundle DIR/token-server/token.crt) on
#                                           127.0.0.1:$LM_TOKEN_REGISTRY_PORT (5113)
#     DIR/token-registry.log, DIR/token-registry.pid
#
#   start   start whatever is not running yet (running parts are left alone), wait
#           until each answers. Safe to call repeatedly.
#   stop    stop all five processes (by their pid files); data under DIR is kept.
#   status  print what runs; exit 0 only if all five run.
#   env     print shell exports for the tests, e.g.  eval "$(scripts/test-env.sh env)"
#             LM_TEST_ENV LM_CONTAINERD_SOCKET LM_REGISTRY LM_AUTH_REGISTRY LM_AUTH_USER
#             LM_AUTH_PASS LM_TOKEN_REGISTRY LM_TOKEN_REALM
#           (while running: the values it was started with, saved in DIR/env.sh)
#
# Settings (read by start): LM_REGISTRY_PORT (5111), LM_AUTH_REGISTRY_PORT (5112),
#   LM_TOKEN_REGISTRY_PORT (5113), LM_TOKEN_SERVER_PORT (5114), LM_AUTH_USER (lmuser),
#   LM_AUTH_PASS (lmpass; both also for the token server). To change a port, stop first.
#
# Nothing listens on anything but 127.0.0.1 and unix sockets under DIR; no system
# containerd or registry is touched (own sockets, ttrpc address, no metrics/debug address).
#
# Needs (Debian 12 packages; this script installs nothing):
#   containerd        containerd, ctr
#   docker-registry   docker-registry (distribution 2.8)
#   curl              optional: readiness probes (falls back to bash /dev/tcp without it)
#   python3-cryptography  the token server runs with /usr/bin/python3 (Debian's python3)
# The htpasswd file needs a bcrypt hash (the only scheme the registry accepts). For the
# default credentials a precomputed hash is embedded below, so nothing else is needed.
# For other credentials (LM_AUTH_USER / LM_AUTH_PASS set before `start`) one of these
# must be available: python3 with the bcrypt module (Debian python3-bcrypt, or
# `pip install bcrypt`), or htpasswd (Debian apache2-utils).
# Must run as root (containerd needs it).
set -euo pipefail

prog=$(basename "$0")
die() { echo "$prog: error: $*" >&2; exit 1; }
say() { echo "$prog: $*" >&2; }

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
}

# --- arguments and settings ----------------------------------------------------------
cmd=${1:-}
case "$cmd" in
  -h|--help|help) usage; exit 0 ;;
  start|stop|status|env) ;;
  "") usage >&2; exit 2 ;;
  *) echo "$prog: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
[ $# -le 2 ] || die "too many arguments (see --help)"
dir=${2:-${LM_TEST_ENV:-/tmp/lm-test-env}}
mkdir -p "$dir" 2>/dev/null || die "cannot create $dir"
dir=$(cd "$dir" && pwd)   # absolute: configs and sockets must not depend on the cwd

reg_port=${LM_REGISTRY_PORT:-5111}
auth_port=${LM_AUTH_REGISTRY_PORT:-5112}
token_port=${LM_TOKEN_REGISTRY_PORT:-5113}
tsrv_port=${LM_TOKEN_SERVER_PORT:-5114}
# What the token registry and its token server agree on (the JWT's aud and iss claims).
token_service=lm-token-registry
token_issuer=lm-test-issuer
default_user=lmuser
default_pass=lmpass
auth_user=${LM_AUTH_USER:-$default_user}
auth_pass=${LM_AUTH_PASS:-$default_pass}
# bcrypt (cost 10) of "lmpass", made once with:
#   python3 -c 'import bcrypt; print(bcrypt.hashpw(b"lmpass", bcrypt.gensalt(10)).decode())'
# shellcheck disable=SC2016  # a literal hash, no expansion wanted
default_hash='$2b$10$Z39E6GEb8hKdsflmTdNuCO0IZFYBKKk5xwOC2zNjdbVDuvn9fH2QW'

ctd_dir=$dir/containerd
ctd_sock=$ctd_dir/containerd.sock
ctd_cfg=$ctd_dir/config.toml
ctd_pid=$dir/containerd.pid
ctd_log=$dir/containerd.log

reg_dir=$dir/registry
reg_pid=$dir/registry.pid
reg_log=$dir/registry.log
auth_dir=$dir/auth-registry
auth_pid=$dir/auth-registry.pid
auth_log=$dir/auth-registry.log
tsrv_dir=$dir/token-server
tsrv_pid=$dir/token-server.pid
tsrv_log=$dir/token-server.log
tsrv_cert=$tsrv_dir/token.crt
tsrv_realm=http://127.0.0.1:$tsrv_port/token
tsrv_script=$(cd "$(dirname "$0")" && pwd)/registry-token-server.py
token_dir=$dir/token-registry
token_pid=$dir/token-registry.pid
token_log=$dir/token-registry.log

# --- helpers -------------------------------------------------------------------------

# running PIDFILE PATTERN: true if the pid in PIDFILE is alive and its command line
# contains PATTERN (guards against a stale pid file whose pid was reused).
running() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$2"
}

# http_get URL [AUTHORIZATION] -> prints the whole response: status line, headers, an
# empty line, the body (CRs removed); nothing if nothing answers. AUTHORIZATION is the
# header's value, e.g. "Basic $(basic_auth U:P)" or "Bearer TOKEN".
http_get() {
  local url=$1 authz=${2:-}
  if command -v curl >/dev/null; then
    curl -s -i -m 2 ${authz:+-H "Authorization: $authz"} "$url" | tr -d '\r' || true
    return 0
  fi
  # Fallback without curl: a raw HTTP/1.0 request over bash's /dev/tcp (loopback only).
  local hostport=${url#http://}; hostport=${hostport%%/*}
  local path=/${url#http://*/} host=${hostport%:*} port=${hostport##*:} auth=""
  [ -z "$authz" ] || auth="Authorization: $authz"$'\r\n'
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$path" "$hostport" "$auth" >&3
    timeout 2 cat <&3 | tr -d '\r'
  ) 2>/dev/null || true
}

basic_auth() { printf %s "$1" | base64 -w0; }

# http_status URL [USER:PASS] -> prints the HTTP status code ("000" if nothing answers).
http_status() {
  local code
  code=$(http_get "$1" ${2:+"Basic $(basic_auth "$2")"} | awk 'NR == 1 {print $2}') || true
  echo "${code:-000}"
}

# port_busy PORT: true if something already accepts connections on 127.0.0.1:PORT.
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_for WHAT PIDFILE LOG CHECK...: poll CHECK (a command) for up to 30 s, failing
# early (with the log tail) if the process dies.
wait_for() {
  local what=$1 pidfile=$2 log=$3 i; shift 3
  for ((i = 0; i < 300; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      say "$what exited during startup; last lines of $log:"
      tail -n 20 "$log" >&2
      rm -f "$pidfile"
      exit 1
    fi
    sleep 0.1
  done
  say "$what did not become ready within 30 s; last lines of $log:"
  tail -n 20 "$log" >&2
  exit 1
}

# spawn PIDFILE LOG CMD...: start CMD in its own session, detached from our stdio,
# and record its pid. (setsid execs in place: a background job is no group leader.)
spawn() {
  local pidfile=$1 log=$2; shift 2
  echo "=== $(date -Is) starting: $*" >>"$log"
  setsid "$@" </dev/null >>"$log" 2>&1 &
  echo $! >"$pidfile"
}

# stop_one NAME PIDFILE PATTERN: SIGTERM, wait up to 10 s, then SIGKILL.
stop_one() {
  local name=$1 pidfile=$2 pattern=$3 pid i
  if ! running "$pidfile" "$pattern"; then
    [ -e "$pidfile" ] && rm -f "$pidfile"
    say "$name: not running"
    return 0
  fi
  pid=$(cat "$pidfile")
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    say "$name (pid $pid) ignored SIGTERM; sending SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    sleep 0.2
  fi
  rm -f "$pidfile"
  say "$name: stopped (pid $pid)"
}

need() { command -v "$1" >/dev/null || die "'$1' not found: apt-get install -y $2"; }

# --- containerd ----------------------------------------------------------------------

write_containerd_config() {
  mkdir -p "$ctd_dir/root" "$ctd_dir/state" "$ctd_dir/opt"
  cat >"$ctd_cfg" <<EOF
# Generated by scripts/test-env.sh; rewritten on every start.
version = 2
root = "$ctd_dir/root"
state = "$ctd_dir/state"
# No Kubernetes CRI: we only use images, content, snapshots, leases.
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$ctd_sock"

# Own ttrpc socket; no metrics or debug listener, so nothing clashes with a system containerd.
[ttrpc]
  address = "$ctd_sock.ttrpc"

[metrics]
  address = ""

[debug]
  address = ""
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "$ctd_dir/opt"
EOF
}

ctr_ready() { timeout 3 ctr --address "$ctd_sock" version; }

start_containerd() {
  need containerd containerd
  need ctr containerd
  # sun_path is 108 bytes; keep some room for the ".ttrpc" suffix.
  [ ${#ctd_sock} -le 100 ] || die "socket path too long for a unix socket (${#ctd_sock} > 100): $ctd_sock; use a shorter DIR"
  if running "$ctd_pid" "$ctd_cfg"; then
    if ctr_ready >/dev/null 2>&1; then say "containerd: already running (pid $(cat "$ctd_pid"))"; return 0; fi
    wait_for containerd "$ctd_pid" "$ctd_log" ctr_ready
    return 0
  fi
  write_containerd_config
  rm -f "$ctd_sock" "$ctd_sock.ttrpc"   # stale sockets from a killed run
  spawn "$ctd_pid" "$ctd_log" containerd --config "$ctd_cfg"
  wait_for containerd "$ctd_pid" "$ctd_log" ctr_ready
  say "containerd: started (pid $(cat "$ctd_pid")), socket $ctd_sock"
}

# --- registries ----------------------------------------------------------------------

# write_registry_config DIR PORT [htpasswd FILE | token REALM CERTBUNDLE]
write_registry_config() {
  local rdir=$1 port=$2 auth=${3:-}
  mkdir -p "$rdir/data"
  {
    cat <<EOF
# Generated by scripts/test-env.sh; rewritten on every start.
version: 0.1
log:
  level: info
  formatter: text
storage:
  filesystem:
    rootdirectory: $rdir/data
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  # Fixed (test-only) secret: avoids a random one per start and its warning.
  secret: lm-test-env-not-a-secret
  headers:
    X-Content-Type-Options: [nosniff]
EOF
    case "$auth" in
      htpasswd)
        cat <<EOF
auth:
  htpasswd:
    realm: lm-test
    path: $4
EOF
        ;;
      token)
        # Docker bearer-token auth: clients get a JWT from the realm; the registry checks
        # it was signed by a key certified by rootcertbundle, for this issuer and service.
        cat <<EOF
auth:
  token:
    realm: $4
    service: $token_service
    issuer: $token_issuer
    rootcertbundle: $5
EOF
        ;;
    esac
  } >"$rdir/config.yml"
}

# bcrypt_hash PASSWORD: print a bcrypt hash (precomputed for the default password).
bcrypt_hash() {
  if [ "$1" = "$default_pass" ]; then echo "$default_hash"; return 0; fi
  if python3 -c 'import bcrypt' 2>/dev/null; then
    LM_PW=$1 python3 -c 'import bcrypt, os; print(bcrypt.hashpw(os.environ["LM_PW"].encode(), bcrypt.gensalt(10)).decode())'
  elif command -v htpasswd >/dev/null; then
    htpasswd -nbB -C 10 x "$1" | sed -n 's/^x://p'
  else
    die "a bcrypt hash for a non-default LM_AUTH_PASS needs python3 with bcrypt (apt-get install python3-bcrypt, or pip install bcrypt) or htpasswd (apt-get install apache2-utils)"
  fi
}

# start_registry NAME PIDFILE LOG RDIR PORT [USER PASS]
start_registry() {
  local name=$1 pidfile=$2 log=$3 rdir=$4 port=$5 user=${6:-} pass=${7:-}
  local url=http://127.0.0.1:$port/v2/ htpasswd="" creds=""
  need docker-registry docker-registry
  if [ -n "$user" ]; then creds=$user:$pass; htpasswd=$rdir/htpasswd; fi
  # Ready means: /v2/ answers 200 (with the credentials, if any).
  ready() { [ "$(http_status "$url" "$creds")" = 200 ]; }
  if running "$pidfile" "$rdir/config.yml"; then
    grep -q "addr: 127.0.0.1:$port\$" "$rdir/config.yml" ||
      die "$name already runs with another port ($(sed -n 's/^ *addr: //p' "$rdir/config.yml")); run '$prog stop' first"
    wait_for "$name" "$pidfile" "$log" ready
    say "$name: already running (pid $(cat "$pidfile")) on 127.0.0.1:$port"
    return 0
  fi
  port_busy "$port" && die "$name: 127.0.0.1:$port is in use by another process (pick another port via LM_REGISTRY_PORT / LM_AUTH_REGISTRY_PORT)"
  write_registry_config "$rdir" "$port" ${htpasswd:+htpasswd "$htpasswd"}
  if [ -n "$user" ]; then
    # Rewrite only when the user/password changed (bcrypt salts differ every time).
    if [ ! -s "$htpasswd.src" ] || [ "$(cat "$htpasswd.src")" != "$user:$(printf %s "$pass" | sha256sum | cut -d' ' -f1)" ]; then
      echo "$user:$(bcrypt_hash "$pass")" >"$htpasswd"
      echo "$user:$(printf %s "$pass" | sha256sum | cut -d' ' -f1)" >"$htpasswd.src"
    fi
  fi
  spawn "$pidfile" "$log" docker-registry serve "$rdir/config.yml"
  wait_for "$name" "$pidfile" "$log" ready
  if [ -n "$user" ]; then
    local anon; anon=$(http_status "$url")
    [ "$anon" = 401 ] || die "$name: expected 401 without credentials, got $anon"
  fi
  say "$name: started (pid $(cat "$pidfile")) on 127.0.0.1:$port${user:+ (basic auth, user $user)}"
}

# --- token server and token registry --------------------------------------------------

# token_from_server SCOPE [USER:PASS] -> prints the JWT the token server issues (nothing if none).
token_from_server() {
  http_get "$tsrv_realm?service=$token_service&scope=$1" ${2:+"Basic $(basic_auth "$2")"} |
    sed -n 's/.*"token": *"\([^"]*\)".*/\1/p' || true
}

start_token_server() {
  local name=token-server health=http://127.0.0.1:$tsrv_port/healthz anon
  [ -x /usr/bin/python3 ] || die "$name: /usr/bin/python3 not found: apt-get install -y python3 python3-cryptography"
  /usr/bin/python3 -c 'import cryptography' 2>/dev/null ||
    die "$name: /usr/bin/python3 cannot import cryptography: apt-get install -y python3-cryptography"
  [ -f "$tsrv_script" ] || die "$name: $tsrv_script is missing"
  # Ready means: /healthz answers 200. Then it must issue a token for the configured user.
  tsrv_ready() { [ "$(http_status "$health")" = 200 ]; }
  if running "$tsrv_pid" "$tsrv_dir"; then
    tr '\0' ' ' <"/proc/$(cat "$tsrv_pid")/cmdline" | grep -qF -- "--port $tsrv_port " ||
      die "$name already runs with another port; run '$prog stop' first"
    wait_for "$name" "$tsrv_pid" "$tsrv_log" tsrv_ready
    [ -n "$(token_from_server repository:lm-test/probe:pull "$auth_user:$auth_pass")" ] ||
      die "$name already runs with other credentials than user $auth_user; run '$prog stop' first"
    say "$name: already running (pid $(cat "$tsrv_pid")) on 127.0.0.1:$tsrv_port"
    return 0
  fi
  port_busy "$tsrv_port" && die "$name: 127.0.0.1:$tsrv_port is in use by another process (pick another port via LM_TOKEN_SERVER_PORT)"
  # Makes DIR/token-server/token.{key,crt} on its first start; the registry trusts token.crt.
  spawn "$tsrv_pid" "$tsrv_log" /usr/bin/python3 "$tsrv_script" --port "$tsrv_port" --key-dir "$tsrv_dir" \
    --user "$auth_user" --password "$auth_pass" --issuer "$token_issuer" --service "$token_service"
  wait_for "$name" "$tsrv_pid" "$tsrv_log" tsrv_ready
  [ -n "$(token_from_server repository:lm-test/probe:pull "$auth_user:$auth_pass")" ] ||
    die "$name: issued no token for user $auth_user; see $tsrv_log"
  anon=$(http_status "$tsrv_realm?service=$token_service&scope=repository:lm-test/probe:pull")
  [ "$anon" = 401 ] || die "$name: expected 401 without credentials, got $anon"
  [ -s "$tsrv_cert" ] || die "$name: did not write $tsrv_cert; see $tsrv_log"
  say "$name: started (pid $(cat "$tsrv_pid")) on 127.0.0.1:$tsrv_port (realm $tsrv_realm, user $auth_user)"
}

start_token_registry() {
  local name=token-registry url=http://127.0.0.1:$token_port/v2/ cfg=$token_dir/config.yml token status how="already running"
  need docker-registry docker-registry
  # Ready means: /v2/ answers 401 with a Bearer challenge that names the token server.
  token_registry_ready() {
    local resp; resp=$(http_get "$url")
    [ "$(echo "$resp" | awk 'NR == 1 {print $2}')" = 401 ] &&
      echo "$resp" | grep -qiF "www-authenticate: bearer realm=\"$tsrv_realm\""
  }
  if running "$token_pid" "$cfg"; then
    { grep -q "addr: 127.0.0.1:$token_port\$" "$cfg" && grep -qF "realm: $tsrv_realm" "$cfg"; } ||
      die "$name already runs with another port or realm ($(sed -n 's/^ *\(addr\|realm\): //p' "$cfg" | paste -sd ' ')); run '$prog stop' first"
    wait_for "$name" "$token_pid" "$token_log" token_registry_ready
  else
    port_busy "$token_port" && die "$name: 127.0.0.1:$token_port is in use by another process (pick another port via LM_TOKEN_REGISTRY_PORT)"
    [ -s "$tsrv_cert" ] || die "$name: no token signing certificate $tsrv_cert (the token server makes it)"
    write_registry_config "$token_dir" "$token_port" token "$tsrv_realm" "$tsrv_cert"
    spawn "$token_pid" "$token_log" docker-registry serve "$cfg"
    wait_for "$name" "$token_pid" "$token_log" token_registry_ready
    how=started
  fi
  # End to end: a token from the token server opens /v2/ (the registry trusts its key).
  token=$(token_from_server repository:lm-test/probe:pull "$auth_user:$auth_pass")
  status=$(http_get "$url" "Bearer $token" | awk 'NR == 1 {print $2}') || true
  [ "$status" = 200 ] ||
    die "$name: /v2/ answered ${status:-nothing} to a token from the token server (a regenerated key? '$prog stop' and start again); see $token_log"
  say "$name: $how (pid $(cat "$token_pid")) on 127.0.0.1:$token_port (bearer tokens from $tsrv_realm)"
}

# --- commands ------------------------------------------------------------------------

print_env() {
  cat <<EOF
export LM_TEST_ENV='$dir'
export LM_CONTAINERD_SOCKET='$ctd_sock'
export LM_REGISTRY='127.0.0.1:$reg_port'
export LM_AUTH_REGISTRY='127.0.0.1:$auth_port'
export LM_AUTH_USER='$auth_user'
export LM_AUTH_PASS='$auth_pass'
export LM_TOKEN_REGISTRY='127.0.0.1:$token_port'
export LM_TOKEN_REALM='$tsrv_realm'
EOF
}

case "$cmd" in
  start)
    [ "$(id -u)" = 0 ] || die "must run as root (containerd needs it)"
    start_containerd
    start_registry registry "$reg_pid" "$reg_log" "$reg_dir" "$reg_port"
    start_registry auth-registry "$auth_pid" "$auth_log" "$auth_dir" "$auth_port" "$auth_user" "$auth_pass"
    start_token_server   # before its registry: it makes the certificate the registry trusts
    start_token_registry
    print_env >"$dir/env.sh"   # what `env` prints while this instance runs
    say "ready; for the exports run: $0 env${2:+ $dir}"
    ;;
  stop)
    stop_one containerd "$ctd_pid" "$ctd_cfg"
    stop_one registry "$reg_pid" "$reg_dir/config.yml"
    stop_one auth-registry "$auth_pid" "$auth_dir/config.yml"
    stop_one token-registry "$token_pid" "$token_dir/config.yml"
    stop_one token-server "$tsrv_pid" "$tsrv_dir"
    ;;
  status)
    rc=0
    show() { # NAME PIDFILE PATTERN
      if running "$2" "$3"; then echo "$1: running (pid $(cat "$2"))"; else echo "$1: stopped"; rc=1; fi
    }
    show containerd "$ctd_pid" "$ctd_cfg"
    show registry "$reg_pid" "$reg_dir/config.yml"
    show auth-registry "$auth_pid" "$auth_dir/config.yml"
    show token-registry "$token_pid" "$token_dir/config.yml"
    show token-server "$tsrv_pid" "$tsrv_dir"
    exit $rc
    ;;
  env)
    if running "$ctd_pid" "$ctd_cfg" && [ -s "$dir/env.sh" ]; then
      cat "$dir/env.sh"   # the settings the running instance was started with
      grep -q LM_TOKEN_REGISTRY "$dir/env.sh" ||
        say "warning: $dir was started by an older $prog, without the token registry (run: $0 start)"
    else
      say "warning: the test environment in $dir is not running (run: $0 start)"
      print_env
    fi
    ;;
esac
