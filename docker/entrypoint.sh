#!/bin/sh
# Run captiond as PUID:PGID (the owner of the photo library). Started as root, it creates that
# user, hands it the state volume and drops root; started with `user:` already set, it just runs.
set -eu

if [ ! -f "${CAPTIOND_CONFIG:-/config/vision.yml}" ]; then
    echo "captiond: no ${CAPTIOND_CONFIG:-/config/vision.yml}: using /opt/captiond/vision.yml.example" >&2
    export CAPTIOND_CONFIG=/opt/captiond/vision.yml.example
fi

if [ "$(id -u)" = "0" ]; then
    if ! getent group "$PGID" >/dev/null; then groupadd --gid "$PGID" captiond; fi
    if ! getent passwd "$PUID" >/dev/null; then
        useradd --uid "$PUID" --gid "$PGID" --no-create-home --home-dir /state --shell /usr/sbin/nologin captiond
    fi
    chown -R "$PUID:$PGID" "${STATE_DIRECTORY:-/state}"
    exec gosu "$PUID:$PGID" "$@"
fi
exec "$@"
