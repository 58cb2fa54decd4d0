#!/usr/bin/env bash
# captiond as a systemd service, for real: boots systemd (PID 1) in systemd-nspawn on a fresh Debian 12 root,
# installs the committed project as README.md says ("Running as a systemd service"), runs the Ollama emulator
# on the host as the model server, and checks: notify/STATUS, the sandbox, captions appearing, status and
# retry from a shell, journald lines, a clean stop, SIGKILL and resume, the watchdog (a short WatchdogSec
# drop-in: an idle daemon is not restarted, a frozen one is), and the hint for a blocked server address.
#
# Run as root on Debian 12 with debootstrap and systemd-container installed, from a clone of the project:
#     sudo bash tests/deploy/systemd.sh
# Needs the network for Debian's packages (the first time; the root is cached under $CAPTIOND_DEPLOY_CACHE,
# default /var/tmp/captiond-deploy) and PyPI (pip install inside the container). Every wait is for a condition
# with a generous deadline, never a fixed sleep. Prints one line per check and "N passed, N failed" at the end.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=tests/deploy/lib.sh
. "$REPO/tests/deploy/lib.sh"
WORK=$(mktemp -d /var/tmp/captiond-systemd.XXXXXX)
ROOT=$WORK/root
UNIT=captiond
LIBRARY=/srv/photos/library          # not the unit's sample path: the drop-in adds it
PHOTOS=12
NSPAWN_PID=""
SERVER_PID=""

inside() {  # run a command inside the booted container
    nsenter --target "$LEADER" --all --root --wd -- /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 "$@"
}
journal() { inside journalctl -u "$UNIT" --no-pager -o cat "$@"; }
journal_has() { journal | grep -q -- "$1"; }
main_pid() { inside systemctl show -p MainPID --value "$UNIT"; }
active() { [ "$(inside systemctl is-active "$UNIT")" = active ]; }
sidecars() { inside sh -c "ls $LIBRARY/*.xmp 2>/dev/null | wc -l"; }
sidecars_at_least() { [ "$(sidecars)" -ge "$1" ]; }
captions_all() {
    [ "$(inside sh -c "grep -l 'A photo with a calm scene' $LIBRARY/*.xmp 2>/dev/null | wc -l")" -eq "$PHOTOS" ]
}
cleanup() {
    local status=$?
    if [ -n "$NSPAWN_PID" ] && kill -0 "$NSPAWN_PID" 2>/dev/null; then
        inside systemctl poweroff >/dev/null 2>&1 || true
        for _ in $(seq 1 120); do kill -0 "$NSPAWN_PID" 2>/dev/null || break; sleep 0.5; done
        kill -9 "$NSPAWN_PID" 2>/dev/null || true
    fi
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    if [ "$status" -eq 0 ] && [ "$failed" -eq 0 ]; then rm -rf "$WORK"; else say "kept $WORK (logs, root)"; fi
}
trap cleanup EXIT

[ "$(id -u)" = 0 ] || { echo "run as root" >&2; exit 2; }
command -v debootstrap >/dev/null && command -v systemd-nspawn >/dev/null \
    || { echo "needs debootstrap and systemd-container: apt-get install -y debootstrap systemd-container" >&2; exit 2; }

# -- a Debian 12 root (the finished root is cached: later runs only unpack it) -----------------------------------
debian_root "$ROOT"
echo captiond-test >"$ROOT/etc/hostname"
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# A machine behind a TLS-inspecting proxy needs its local CAs inside too (pip reads PIP_CERT below).
cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/" 2>/dev/null || true

# -- the project, from a fresh clone of what is committed --------------------------------------------------------
git clone -q --no-hardlinks "$REPO" "$ROOT/root/captiond"
git -C "$ROOT/root/captiond" log --oneline -1 | sed 's/^/commit /'

# -- the model server: the emulator on the host's loopback (the container shares the host's network) -----------
python3 "$REPO/tests/deploy/model_server.py" 0.4 >"$WORK/model-server.log" 2>&1 &
SERVER_PID=$!
wait_until 30 test -s "$WORK/model-server.log" || { echo "the emulator did not start" >&2; exit 1; }
PORT=$(head -1 "$WORK/model-server.log")
say "model server (emulator) on 127.0.0.1:$PORT"

# -- boot ------------------------------------------------------------------------------------------------------
say "booting systemd in systemd-nspawn"
SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 systemd-nspawn --boot --register=no --keep-unit --console=passive \
    --capability=CAP_NET_ADMIN,CAP_BPF --system-call-filter=bpf --machine=captiond-test -D "$ROOT" \
    >"$WORK/nspawn.log" 2>&1 &
NSPAWN_PID=$!
leader() { pgrep -P "$NSPAWN_PID" -x systemd | head -1; }
wait_until 60 leader || { cat "$WORK/nspawn.log" >&2; exit 1; }
LEADER=$(leader)
booted() { case "$(inside systemctl is-system-running 2>/dev/null)" in running|degraded) return 0;; esac; return 1; }
check "systemd boots as PID 1 of the container" wait_until 120 booted
inside systemctl --version | head -1 | sed 's/^/container: /'

# -- install as README.md says -----------------------------------------------------------------------------------
say "installing (python3 -m venv /opt/captiond/.venv && pip install .)"
install_started=$SECONDS
inside update-ca-certificates >/dev/null 2>&1 || true
inside env PIP_CERT=/etc/ssl/certs/ca-certificates.crt sh -c \
    'cd /root/captiond && python3 -m venv /opt/captiond/.venv && /opt/captiond/.venv/bin/pip install -q .' \
    >"$WORK/pip.log" 2>&1
say "installed in $((SECONDS - install_started)) s"
inside useradd --system --create-home --home-dir /home/photos --shell /usr/sbin/nologin photos
inside install -d -o photos -g photos "$(dirname "$LIBRARY")" "$LIBRARY"
for index in $(seq -w 1 "$PHOTOS"); do
    cp "$REPO/tests/fixtures/Canon_PowerShot_S40.jpg" "$ROOT$LIBRARY/photo-$index.jpg"
done
inside chown -R photos:photos "$LIBRARY"
inside sh -c "cd /root/captiond && install -D -m 0644 vision.yml.example /etc/captiond/vision.yml \
    && sed -i 's#^  Originals: .*#  Originals: $LIBRARY#' /etc/captiond/vision.yml \
    && install -m 0644 systemd/captiond.service /etc/systemd/system/"
mkdir -p "$ROOT/etc/systemd/system/$UNIT.service.d"
cat >"$ROOT/etc/systemd/system/$UNIT.service.d/override.conf" <<EOF
[Service]
User=photos
Group=photos
ReadWritePaths=$LIBRARY
Environment=OLLAMA_BASE_URL=http://127.0.0.1:$PORT
EOF
inside systemctl daemon-reload
check "the unit passes systemd-analyze verify" inside systemd-analyze verify "/etc/systemd/system/$UNIT.service"
inside systemd-analyze security "$UNIT.service" 2>/dev/null | tail -1 | sed 's/^/security: /' || true

# -- start, notify, STATUS, sandbox, captions ---------------------------------------------------------------------
check "systemctl enable --now returns with the unit active (Type=notify: READY=1)" \
    inside systemctl enable --now "$UNIT"
check "the unit is active (ReadWritePaths=-/srv/photos/originals does not exist: no 226/NAMESPACE)" active
status_text() { inside systemctl show -p StatusText --value "$UNIT" | grep -q "done, .* queued"; }
check "STATUS= shows the queue" wait_until 60 status_text
pid=$(main_pid)
# $pid is the container's PID of the daemon: look at it from inside.
check "runs as photos" [ "$(inside stat -c %U "/proc/$pid")" = photos ]
check "no new privileges" inside grep -q -E '^NoNewPrivs:\s+1' "/proc/$pid/status"
check "a seccomp filter (SystemCallFilter=)" inside grep -q -E '^Seccomp:\s+2' "/proc/$pid/status"
check "no effective capabilities" inside grep -q -E '^CapEff:\s+0+$' "/proc/$pid/status"
readonly_usr() { ! inside nsenter --target "$pid" --mount -- /usr/bin/touch /usr/captiond-write-test 2>/dev/null; }
check "/usr is read-only for the daemon (ProtectSystem=strict)" readonly_usr
writable_library() {
    inside nsenter --target "$pid" --mount -- /usr/bin/setpriv --reuid photos --regid photos --clear-groups \
        /usr/bin/touch "$LIBRARY/.write-test" && rm -f "$ROOT$LIBRARY/.write-test"
}
check "the library is writable for it (the drop-in's ReadWritePaths)" writable_library
check "captions appear in sidecars" wait_until 120 sidecars_at_least 3

# -- SIGKILL mid-backfill, and resume -----------------------------------------------------------------------------
first_pid=$(main_pid)
inside systemctl kill -s SIGKILL "$UNIT"
restarted() { active && [ "$(main_pid)" != "$first_pid" ] && [ "$(main_pid)" != 0 ]; }
check "after SIGKILL systemd restarts it (Restart=on-failure)" wait_until 90 restarted
check "every photo is captioned after the restart" wait_until 180 captions_all
inside runuser -u photos -- /opt/captiond/.venv/bin/captiond status --config /etc/captiond/vision.yml \
    >"$WORK/status.txt" 2>&1 || true
check "status from a shell, as photos, checks the daemon's server (not the shell's)" \
    grep -q "127.0.0.1:$PORT/api/generate: ok" "$WORK/status.txt"
check "status finds the unit's state in /var/lib/captiond by itself" grep -q "$PHOTOS done" "$WORK/status.txt"
retry_as_root() {
    inside /opt/captiond/.venv/bin/captiond retry --config /etc/captiond/vision.yml >"$WORK/retry.txt" 2>&1 \
        && [ -z "$(find "$ROOT/var/lib/private/captiond" "$ROOT/var/lib/captiond/" -user root -name 'captiond.db*' 2>/dev/null)" ]
}
check "retry as root runs as the database's owner (no root-owned database files)" retry_as_root
no_second_timestamp() { journal | grep -m1 'captioned photo-' | grep -q -E '^INFO captioned'; }
check "journal lines carry no second timestamp" no_second_timestamp

# -- stop ---------------------------------------------------------------------------------------------------------
check "systemctl stop returns" inside systemctl stop "$UNIT"
clean_stop() {
    [ "$(inside systemctl show -p Result --value "$UNIT")" = success ] \
        && [ "$(inside systemctl show -p ExecMainStatus --value "$UNIT")" = 0 ]
}
check "the stop is clean (Result=success, exit status 0)" clean_stop
check "the daemon logged its stop" journal_has "stopped"

# -- the watchdog: an idle daemon is not restarted; a frozen one is ----------------------------------------------
cat >"$ROOT/etc/systemd/system/$UNIT.service.d/watchdog.conf" <<EOF
[Service]
WatchdogSec=3s
RestartSec=1s
EOF
inside systemctl daemon-reload
inside systemctl start "$UNIT"
idle_pid=$(main_pid)
same_pid_for() {  # the same MainPID, active, for $1 seconds (several watchdog periods)
    local until=$((SECONDS + $1))
    while [ "$SECONDS" -lt "$until" ]; do active && [ "$(main_pid)" = "$idle_pid" ] || return 1; sleep 0.5; done
}
check "an idle daemon keeps the watchdog fed (15 s = 5 x WatchdogSec, no restart)" same_pid_for 15
inside sh -c "kill -STOP $idle_pid"
watchdog_fired() { journal_has "Watchdog timeout" || inside journalctl --no-pager -o cat | grep -q "$UNIT.service: Watchdog timeout"; }
check "a frozen daemon is killed by the watchdog" wait_until 60 watchdog_fired
unfrozen() { active && [ "$(main_pid)" != "$idle_pid" ] && [ "$(main_pid)" != 0 ]; }
check "and restarted" wait_until 60 unfrozen
inside systemctl stop "$UNIT"
rm "$ROOT/etc/systemd/system/$UNIT.service.d/watchdog.conf"

# -- a model server outside IPAddressAllow= gets a hint ---------------------------------------------------------
sed -i "s#^Environment=OLLAMA_BASE_URL=.*#Environment=OLLAMA_BASE_URL=http://198.51.100.7:11434#" \
    "$ROOT/etc/systemd/system/$UNIT.service.d/override.conf"
inside systemctl daemon-reload
inside systemctl start "$UNIT"
check "a blocked model-server address names the drop-in line that allows it" \
    wait_until 120 journal_has "IPAddressAllow=198.51.100.7"
check "the daemon waits (active) instead of failing" active
errors_as_errors() { journal -p err | grep -q '^ERROR cannot reach' && ! journal -p err | grep -q '^INFO'; }
check "log levels reach the journal as priorities (-p err: errors only)" errors_as_errors
inside systemctl stop "$UNIT"

journal >"$WORK/journal.txt" 2>&1 || true
say "requests answered by the emulator: $(grep -c 'generation request' "$WORK/model-server.log" || true)"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
