# Shared by the deploy scripts: one line per check, waits for conditions, the cached Debian 12 root.
# shellcheck shell=bash

CACHE=${CAPTIOND_DEPLOY_CACHE:-/var/tmp/captiond-deploy}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv,libimage-exiftool-perl,ca-certificates,iproute2
passed=0
failed=0

say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }
check() {  # check DESCRIPTION COMMAND...: one line, counted
    if "${@:2}"; then passed=$((passed + 1)); say "ok    $1"; else failed=$((failed + 1)); say "FAIL  $1"; fi
}
wait_until() {  # wait_until SECONDS COMMAND...: true as soon as COMMAND succeeds, false after SECONDS
    local deadline=$((SECONDS + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then return 1; fi
        sleep 0.5
    done
}
debian_root() {  # debian_root DIRECTORY: a fresh Debian 12 root there (debootstrap once, then from the cache)
    mkdir -p "$CACHE" "$1"
    if [ ! -f "$CACHE/bookworm-root.tar" ]; then
        say "debootstrap bookworm (first run only)"
        if [ ! -f "$CACHE/bookworm-tarball.tgz" ]; then
            debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" --make-tarball="$CACHE/bookworm-tarball.tgz" \
                bookworm "$1.make-tarball" "$MIRROR" >"$1.debootstrap.log" 2>&1
        fi
        debootstrap --variant=minbase --include="$DEBIAN_PACKAGES" --unpack-tarball="$CACHE/bookworm-tarball.tgz" \
            bookworm "$1" "$MIRROR" >>"$1.debootstrap.log" 2>&1
        tar -C "$1" -cf "$CACHE/bookworm-root.tar.part" . && mv "$CACHE/bookworm-root.tar.part" "$CACHE/bookworm-root.tar"
    else
        tar -C "$1" -xf "$CACHE/bookworm-root.tar"
    fi
}
