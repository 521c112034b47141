#!/bin/bash
# The checks of .ci/boot-test, run inside the booted container by iamtokend-boot-test.service
# (a oneshot unit of the container's own systemd, so systemctl, journalctl, loginctl and
# systemd-run here talk to a real PID 1). Installs the .deb with dpkg, starts the simulator,
# points apps at it, and checks the units as users get them. One "PASS: ..." or
# "FAIL: ..." line per check goes to $T/results, details to $T/log; the container powers
# off at the end whatever happened. Network: the container's own loopback only.
set -uo pipefail

T=/opt/iamtokend-test
SOCK=/run/iamtokend/iamtokend.sock
SVC=iamtokend.service
: >"$T/results"
exec > >(tee -a "$T/log") 2>&1
echo booted >"$T/booted"

finish() {
  journalctl -b --no-pager -o short-precise >"$T/journal.txt" 2>&1
  echo "DONE" >>"$T/results"
  systemctl poweroff --no-block
}
trap finish EXIT

pass() { echo "PASS: $*" | tee -a "$T/results"; }
fail() { echo "FAIL: $*" | tee -a "$T/results"; }
# check NAME CMD...: runs CMD (a function below), PASS or FAIL with its details kept in the log.
check() {
  local name=$1
  shift
  echo "--- $name"
  if "$@"; then pass "$name"; else fail "$name"; fi
}
# waitfor SECS CMD...: polls CMD every 0.2 s until it succeeds or SECS pass.
waitfor() {
  local end=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$end" ] || return 1
    sleep 0.2
  done
}
prop() { systemctl show "$SVC" -p "$1" --value; }
# get SOCKET PATH [USER]: the HTTP status of GET PATH on SOCKET as USER (000: no connection;
# curl's reason in the log); the body in /tmp/body (written by this root shell, not by USER).
get() {
  runuser -u "${3:-root}" -- curl -sS -w '\n%{http_code}' --max-time 10 \
    --unix-socket "$1" "http://localhost$2" >/tmp/response
  head -n -1 /tmp/response >/tmp/body
  tail -n 1 /tmp/response
}
journal_of() { journalctl -b --no-pager -o cat -u "$1"; }
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }

# PID 1 at debug level logs every sd_notify message it receives ("Got notification message
# from PID N (READY=1, STATUS=...)"): that is how READY, STATUS, RELOADING and WATCHDOG are seen.
systemd-analyze log-level debug

echo "--- the simulator (bench-sim) on the container's loopback"
systemd-run --quiet --unit=iamtokend-sim -p DynamicUser=yes -p StandardOutput=file:/run/sim.out \
  "$T/bench-sim" 3600
waitfor 20 grep -q '^endpoint_url' /run/sim.out || {
  fail "simulator starts"
  exit 1
}
ENDPOINT=$(sed -n 's/^endpoint_url = "\(.*\)"$/\1/p' /run/sim.out)
eval "$(grep '^AWS_' /run/sim.out | sed 's/^/export /')"
echo "simulator at $ENDPOINT"

# app NAME DIR [EXTRA]: a jwt-bearer app against the simulator, its assertion beside it.
app() {
  local name=$1 dir=$2 extra=${3:-} hex
  hex=$(printf '%s' "$name" | od -An -tx1 | tr -d ' \n' | cut -c1-16)
  hex=$(printf '%-16s' "$hex" | tr ' ' 0)
  printf '%s.%s.%s' "$(printf '{"alg":"RS256"}' | b64url)" \
    "$(printf '{"sub":"%s"}' "$name" | b64url)" "$(printf 'sig-%s' "$name" | b64url)" \
    >"$dir/$name.jwt"
  cat >"$dir/apps.d/$name.toml" <<EOF
client_id = "arn:aws:sso::123456789012:application/ssoins-1111222233334444/apl-$hex"
region = "us-east-1"
endpoint_url = "$ENDPOINT"
grant = "jwt-bearer"
assertion_file = "$dir/$name.jwt"
$extra
EOF
}

# The test's drop-in, in place before the package starts anything: SystemCallErrorNumber=
# unset, so a syscall outside the filter kills the daemon with SIGSYS instead of failing with
# EPERM; a 6 s watchdog so that its pings and its firing show within seconds.
mkdir -p /etc/systemd/system/$SVC.d
cat >/etc/systemd/system/$SVC.d/boot-test.conf <<'EOF'
[Service]
SystemCallErrorNumber=
WatchdogSec=6s
EOF
useradd -m alice
useradd -m bob

installed() {
  timeout 120 dpkg -i "$T/iamtokend.deb" || return 1
  getent group iamtokend && getent passwd iamtokend || return 1
  [ "$(stat -c '%U:%G %a' /etc/iamtokend/apps.d)" = "root:iamtokend 750" ] || return 1
  [ "$(systemctl is-enabled iamtokend.socket)" = enabled ] || return 1
  [ "$(systemctl is-active iamtokend.socket)" = active ] || return 1
  [ "$(stat -c '%U:%G %a' $SOCK)" = "root:iamtokend-clients 660" ] || return 1
  # Nothing has connected yet: the service waits for its first client.
  [ "$(systemctl is-active $SVC)" = inactive ]
}
check "dpkg -i installs the package: user and group iamtokend, /etc/iamtokend/apps.d root:iamtokend 0750, iamtokend.socket enabled and listening (root:iamtokend-clients 0660), the service not started" installed

# What a minimal Debian lacks and the package needs at run time: CA certificates (without
# them the AWS SDK's TLS setup panics at start: "no native root CA certificates found") and
# procps (/bin/kill, the unit's ExecReload=). The rootfs has both (an offline container
# cannot fetch a dependency), so the package's Depends: are checked for them.
depends() {
  local d p ok=0
  d=$(dpkg-deb -f "$T/iamtokend.deb" Depends)
  echo "Depends: $d"
  for p in ca-certificates procps; do
    printf '%s\n' "$d" | tr ',|' '\n\n' | grep -qE "^ *$p( |\$)" || { echo "missing: $p"; ok=1; }
  done
  return $ok
}
check "the package depends on ca-certificates (TLS roots) and procps (/bin/kill of ExecReload=)" depends

# alice may connect (the socket's group) and read the apps (their [access] names that group);
# bob is in neither.
usermod -aG iamtokend-clients alice
cat >/etc/iamtokend/environment <<EOF
AWS_ACCESS_KEY_ID=$AWS_ACCESS_KEY_ID
AWS_SECRET_ACCESS_KEY=$AWS_SECRET_ACCESS_KEY
AWS_REGION=$AWS_REGION
AWS_EC2_METADATA_DISABLED=true
EOF
app analytics /etc/iamtokend $'[access]\ngroups = ["iamtokend-clients"]'
chgrp iamtokend /etc/iamtokend/environment /etc/iamtokend/*.jwt /etc/iamtokend/apps.d/*
chmod 0640 /etc/iamtokend/environment /etc/iamtokend/*.jwt /etc/iamtokend/apps.d/*

activation() {
  [ "$(systemctl is-active $SVC)" = inactive ] || return 1
  local code
  code=$(get $SOCK /v1/health) || return 1
  echo "first connect: /v1/health $code"
  [ "$code" = 200 ] || return 1
  [ "$(systemctl is-active $SVC)" = active ] &&
    [ "$(prop TriggeredBy)" = iamtokend.socket ]
}
check "socket activation: the first connect to $SOCK starts iamtokend.service and is answered" activation

notified() {
  [ "$(prop Type)" = notify ] && [ "$(prop SubState)" = running ] || return 1
  waitfor 20 sh -c "systemctl show $SVC -p StatusText --value | grep -qx '1 app: 1 ready'" ||
    { echo "StatusText: $(prop StatusText)"; return 1; }
  journal_of $SVC | grep -E 'Got notification message from PID [0-9]+ \(READY=1, STATUS=' ||
    return 1
  echo "StatusText: $(prop StatusText)"
}
check "Type=notify: READY=1 with STATUS= from the daemon; StatusText '1 app: 1 ready'" notified

reloaded() {
  app reports /etc/iamtokend $'[access]\ngroups = ["iamtokend-clients"]'
  chgrp iamtokend /etc/iamtokend/*.jwt /etc/iamtokend/apps.d/*
  chmod 0640 /etc/iamtokend/*.jwt /etc/iamtokend/apps.d/*
  local from pid
  pid=$(prop MainPID)
  from=$(journal_of $SVC | wc -l)
  timeout 60 systemctl reload $SVC || return 1
  # systemd 252 does not wait for the daemon's READY=1 after ExecReload=: poll for it.
  local seen='' end=$((SECONDS + 20))
  until case "$seen" in "RELOADING=1 READY=1"*) true ;; *) false ;; esac; do
    [ "$SECONDS" -lt "$end" ] || break
    sleep 0.2
    seen=$(journal_of $SVC | tail -n +"$((from + 1))" | grep 'Got notification message' |
      grep -oE '\((RELOADING|READY)=1' | tr -d '(' | tr '\n' ' ')
  done
  echo "notifications since the reload: $seen"
  case "$seen" in "RELOADING=1 READY=1"*) ;; *) return 1 ;; esac
  [ "$(prop MainPID)" = "$pid" ] && [ "$(prop ActiveState)" = active ] || return 1
  waitfor 20 sh -c "systemctl show $SVC -p StatusText --value | grep -qx '2 apps: 2 ready'" ||
    { echo "StatusText: $(prop StatusText)"; return 1; }
  [ "$(get $SOCK /v1/apps/reports/token alice)" = 200 ]
}
check "systemctl reload: RELOADING=1 then READY=1, same pid, the added app served ('2 apps: 2 ready')" reloaded

watchdog_quiet() {
  [ "$(prop WatchdogUSec)" = 6s ] || { echo "WatchdogUSec=$(prop WatchdogUSec)"; return 1; }
  local from
  from=$(journal_of $SVC | wc -l)
  sleep 14
  local pings
  pings=$(journal_of $SVC | tail -n +"$((from + 1))" | grep -c 'Got notification message.*WATCHDOG=1')
  echo "WATCHDOG=1 pings in 14 s: $pings; NRestarts=$(prop NRestarts)"
  [ "$pings" -ge 3 ] && [ "$(prop NRestarts)" = 0 ] &&
    ! journal_of $SVC | grep -q 'Watchdog timeout'
}
check "watchdog (WatchdogSec=6s): pinged every ~3 s, never fires on a healthy daemon" watchdog_quiet

watchdog_fires() {
  local pid
  pid=$(prop MainPID)
  kill -STOP "$pid"
  waitfor 30 sh -c "journalctl -b -o cat -u $SVC | grep -q 'Watchdog timeout'" || return 1
  waitfor 60 sh -c "[ \"\$(systemctl show $SVC -p MainPID --value)\" != $pid ] &&
    [ \"\$(systemctl is-active $SVC)\" = active ]" || return 1
  journal_of $SVC | grep -E 'Watchdog timeout|Main process exited' | tail -n 3
  echo "NRestarts=$(prop NRestarts) new pid $(prop MainPID) (frozen one was $pid)"
  [ "$(prop NRestarts)" = 1 ] && [ "$(get $SOCK /v1/health)" = 200 ]
}
check "watchdog fires on a frozen daemon (SIGSTOP): 'Watchdog timeout', restarted, serving again" watchdog_fires

access() {
  local a b
  # The service has started (and restarted) by now: the socket and its directory must still
  # be as the socket unit made them, not chowned to the service's user (RuntimeDirectory=).
  echo "socket: $(stat -c '%U:%G %a' $SOCK); its directory: $(stat -c '%U:%G %a' ${SOCK%/*})"
  [ "$(stat -c '%U:%G %a' $SOCK)" = "root:iamtokend-clients 660" ] || return 1
  [ "$(stat -c '%U:%G %a' ${SOCK%/*})" = "root:root 755" ] || return 1
  a=$(get $SOCK /v1/apps/analytics/token alice)
  grep -q '"access_token"' /tmp/body || a="$a (no access_token)"
  b=$(get $SOCK /v1/apps/analytics/token bob)
  echo "alice (group iamtokend-clients): $a; bob: '$b' (000: no connection)"
  [ "$a" = 200 ] && [ "$b" = 000 ]
}
check "a member of group iamtokend-clients (alice, admitted by the app's [access]) reads a token; another user (bob) cannot connect; the socket stays root:iamtokend-clients 0660 after the service ran" access

stopped() {
  local t0=$SECONDS
  timeout 60 systemctl stop $SVC || return 1
  echo "stop took $((SECONDS - t0)) s; Result=$(prop Result) ExecMainCode=$(prop ExecMainCode) ExecMainStatus=$(prop ExecMainStatus)"
  [ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] || return 1
  journal_of $SVC | grep -E 'Got notification message.*STOPPING=1' || return 1
  # The socket stays with systemd: the next client starts the daemon again.
  [ -S $SOCK ] && [ "$(get $SOCK /v1/health)" = 200 ] && timeout 60 systemctl stop $SVC
}
check "systemctl stop: STOPPING=1, exit 0, Result=success; the socket stays and re-activates" stopped

sandboxed() {
  # 2147483646 is systemd's "kill" (SECCOMP_ERROR_NUMBER_KILL): the drop-in took effect.
  echo "SystemCallErrorNumber=$(prop SystemCallErrorNumber)"
  [ "$(prop SystemCallErrorNumber)" = 2147483646 ] || return 1
  systemctl cat $SVC | grep -q '^SystemCallFilter=@system-service' || return 1
  # The filter is enforced in this container: the unit's filter kills a process that calls
  # setpriority (in @resources), here nice(1) raising its priority.
  local probe
  probe=$(timeout 60 systemd-run --wait -p SystemCallFilter=@system-service \
    -p 'SystemCallFilter=~@privileged @resources' /usr/bin/nice -n -1 /bin/true 2>&1)
  echo "a forbidden syscall under the same filter: $(echo "$probe" | grep -o 'code=[a-z]*/status=[A-Z0-9]*')"
  echo "$probe" | grep -q 'code=killed/status=SYS' || return 1
  if journal_of $SVC | grep -Ei 'SIGSYS|status=31|Bad system call|EPERM|Operation not permitted'; then
    return 1
  fi
  # Every exit of the daemon was a clean stop or the watchdog test's abort/kill.
  journal_of $SVC | grep 'Main process exited' || true
  ! journal_of $SVC | grep 'Main process exited' |
    grep -vE 'code=exited, status=0/SUCCESS|code=(killed|dumped), status=(6/ABRT|9/KILL)'
}
check "sandbox: SystemCallFilter with SystemCallErrorNumber= unset (a forbidden syscall kills); no SIGSYS/EPERM in the journal" sandboxed

exposure() {
  # Scored without the test's drop-in: the unit as packaged.
  rm -r /etc/systemd/system/$SVC.d
  timeout 60 systemctl daemon-reload
  local out score
  out=$(systemd-analyze security --no-pager $SVC)
  score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
  echo "$out" | tail -n 1
  [ -n "$score" ] && awk -v s="$score" 'BEGIN { exit !(s <= 1.5) }'
}
check "systemd-analyze security iamtokend.service (online, the packaged unit) <= 1.5" exposure

user_units() {
  local uid home
  uid=$(id -u alice)
  home=/home/alice
  mkdir -p $home/.config/iamtokend/apps.d $home/.aws
  printf 'apps_dir = "apps.d"\n' >$home/.config/iamtokend/iamtokend.toml
  app analytics $home/.config/iamtokend
  printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >$home/.aws/credentials
  printf '[default]\nregion = %s\n' "$AWS_REGION" >$home/.aws/config
  chown -R alice:alice $home/.config $home/.aws
  chmod -R go= $home/.config $home/.aws
  timeout 60 loginctl enable-linger alice || return 1
  waitfor 30 sh -c "[ \"\$(systemctl is-active user@$uid.service)\" = active ]" || return 1
  echo "Linger=$(loginctl show-user alice -p Linger --value); user@$uid.service active"
  local usr=(timeout 60 runuser -u alice -- env XDG_RUNTIME_DIR=/run/user/$uid systemctl --user)
  "${usr[@]}" enable --now iamtokend.socket || return 1
  [ "$("${usr[@]}" is-active iamtokend.service)" = inactive ] || return 1
  local usock=/run/user/$uid/iamtokend/iamtokend.sock code
  code=$(get $usock /v1/apps/analytics/token alice)
  grep -q '"access_token"' /tmp/body || code="$code (no access_token)"
  echo "user socket $usock: token $code; bob: $(get $usock /v1/health bob)"
  [ "$code" = 200 ] && [ "$("${usr[@]}" is-active iamtokend.service)" = active ] || return 1
  waitfor 20 sh -c "runuser -u alice -- env XDG_RUNTIME_DIR=/run/user/$uid systemctl --user \
    show iamtokend.service -p StatusText --value | grep -qx '1 app: 1 ready'" || return 1
  "${usr[@]}" stop iamtokend.service iamtokend.socket || return 1
  [ "$("${usr[@]}" show iamtokend.service -p Result --value)" = success ] || return 1
  ! journalctl -b --no-pager -o cat _UID="$uid" | grep -Ei 'SIGSYS|status=31|Operation not permitted'
}
check "user units under a lingering user manager (loginctl enable-linger alice): socket-activated, token served, STATUS, clean stop" user_units

upgraded() {
  # What an earlier build's unit (RuntimeDirectory=iamtokend) left after a service start: the
  # socket and its directory given to the daemon's user. Reinstalling is an upgrade to dpkg
  # (postinst configure with the old version), which must give them back.
  [ "$(get $SOCK /v1/health)" = 200 ] || return 1
  chown iamtokend:iamtokend /run/iamtokend $SOCK
  timeout 120 dpkg -i "$T/iamtokend.deb" || return 1
  echo "after the upgrade: dir $(stat -c '%U:%G %a' /run/iamtokend), socket $(stat -c '%U:%G %a' $SOCK)"
  [ "$(stat -c '%U:%G %a' /run/iamtokend)" = "root:root 755" ] &&
    [ "$(stat -c '%U:%G %a' $SOCK)" = "root:iamtokend-clients 660" ] &&
    [ "$(get $SOCK /v1/apps/analytics/token alice)" = 200 ]
}
check "upgrade (dpkg -i again) over a socket an earlier unit gave to iamtokend:iamtokend: re-created root:iamtokend-clients 0660, alice served" upgraded
