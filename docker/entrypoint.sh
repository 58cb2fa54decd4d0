#!/bin/sh
# Run captiond as PUID:PGID (the owner of the photo library). Started as root, it creates that
# user, hands it the state volume and drops root; started with `user:` already set, it just runs.
# Setup problems are said in one message each; none of them makes the container crash-loop.
set -eu

state="${STATE_DIRECTORY:-/state}"
originals="${CAPTIOND_ORIGINALS:-/photoprism/originals}"

if [ ! -f "${CAPTIOND_CONFIG:-/config/vision.yml}" ]; then
    echo "captiond: no ${CAPTIOND_CONFIG:-/config/vision.yml}: using /opt/captiond/vision.yml.example" >&2
    export CAPTIOND_CONFIG=/opt/captiond/vision.yml.example
fi

if [ "$(id -u)" = "0" ]; then
    if ! getent group "$PGID" >/dev/null; then groupadd --gid "$PGID" captiond; fi
    if ! getent passwd "$PUID" >/dev/null; then
        useradd --uid "$PUID" --gid "$PGID" --no-create-home --home-dir "$state" --shell /usr/sbin/nologin captiond
    fi
    chown -R "$PUID:$PGID" "$state"
    chmod 0750 "$state"   # the image's folder is world-writable for --user; the queue is PUID's from now on
    # Docker creates a missing ./originals as an empty root-owned folder: hand it to the library's owner.
    if [ -d "$originals" ] && [ "$PUID" != "0" ] && [ "$(stat -c %u "$originals")" = "0" ] \
            && [ -z "$(ls -A "$originals")" ]; then
        chown "$PUID:$PGID" "$originals"
        echo "captiond: $originals was an empty folder owned by root; it now belongs to $PUID:$PGID" >&2
    fi
    if [ -d "$originals" ] && ! gosu "$PUID:$PGID" test -w "$originals"; then
        echo "captiond: $originals (owner $(stat -c %u:%g "$originals")) is not writable by PUID:PGID $PUID:$PGID," \
             "so no caption can be written. Fix it once on the host, in the compose folder:" \
             "sudo chown -R $PUID:$PGID ./originals (or set PUID/PGID to its owner); then queue the failed photos" \
             "again: docker compose exec captiond captiond retry" >&2
    fi
    exec gosu "$PUID:$PGID" "$@"
fi

# Started as --user UID:GID: the state volume (and its database, if there is one) must be writable by that user.
writable_state() { [ -w "$state" ] && { [ ! -e "$state/captiond.db" ] || [ -w "$state/captiond.db" ]; }; }
if ! writable_state; then
    echo "captiond: the state folder $state (owner $(stat -c %u:%g "$state")) is not writable by $(id -u):$(id -g)." \
         "Start without --user and set PUID/PGID instead, or give the volume to that user once:" \
         "docker run --rm --user 0 -v VOLUME:/state --entrypoint chown IMAGE -R $(id -u):$(id -g) /state." \
         "Waiting until it is writable." >&2
    trap 'exit 143' TERM INT
    while ! writable_state; do sleep 5; done
fi
exec "$@"
