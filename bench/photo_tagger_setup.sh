#!/usr/bin/env bash
# Installs photo-tagger 0.10.1 (PyPI; Python 3.14 only) in a Debian sid chroot, for bench/peer.py (B9).
# Usage (root): bash bench/photo_tagger_setup.sh [DIR]   (default /var/cache/captiond-photo-tagger)
# Idempotent; a few minutes the first time. Reaches only the machine's Debian mirror and PyPI (through the
# host's pip; the chroot's pip installs offline).
set -euo pipefail
DIR=${1:-${PHOTO_TAGGER_DIR:-/var/cache/captiond-photo-tagger}}
ROOT=$DIR/sid
VERSION=0.10.1
mkdir -p "$DIR"
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  command -v debootstrap >/dev/null || { apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  # The machine's own Debian mirror (the one apt already uses).
  mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
  [ -x "$ROOT/bin/sh" ] || { rm -rf "$ROOT"; debootstrap --variant=minbase sid "$ROOT" "$mirror" > "$DIR/debootstrap.log" 2>&1; }
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
  chroot "$ROOT" apt-get -o Acquire::Check-Valid-Until=false update -qq
  chroot "$ROOT" env DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::Check-Valid-Until=false \
      install -y -qq --no-install-recommends python3 python3-venv libimage-exiftool-perl ca-certificates \
      > "$DIR/apt.log" 2>&1
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
if ! chroot "$ROOT" /opt/photo-tagger/bin/photo-tagger --version >/dev/null 2>&1; then
  # The wheels are fetched by the host's pip (as the host reaches PyPI), for the chroot's Python 3.14,
  # and installed there without a network.
  PIP=${PIP:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/pip}
  rm -rf "$ROOT/tmp/wheels"
  "$PIP" download -q "photo-tagger==$VERSION" --python-version 3.14 --implementation cp --abi cp314 \
      --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
      --platform linux_x86_64 --only-binary=:all: -d "$ROOT/tmp/wheels" > "$DIR/pip.log" 2>&1
  chroot "$ROOT" python3 -m venv /opt/photo-tagger
  chroot "$ROOT" env -i PATH=/usr/bin:/bin /opt/photo-tagger/bin/pip install -q --no-index \
      --find-links /tmp/wheels "photo-tagger==$VERSION" >> "$DIR/pip.log" 2>&1
  rm -rf "$ROOT/tmp/wheels"
fi
chroot "$ROOT" env -i PATH=/usr/bin:/bin PHOTO_TAGGER_TELEMETRY=0 /opt/photo-tagger/bin/photo-tagger --version
