#!/usr/bin/env bash
# A Docker daemon and the Dockerfile's base image, so that the image can be built and run here
# (tests/deploy/test_image.py). Root, Debian 12 (bookworm).
#   bash scripts/docker-setup.sh [BASE]        (BASE defaults to python:3.11-slim)
#
# - installs docker.io from Debian where /usr/bin/docker or dockerd is missing;
# - starts dockerd (log /tmp/dockerd.log, pid in /tmp/dockerd.pid) unless a daemon answers;
# - makes sure BASE exists: `docker pull` where a registry is reachable, else a stand-in built
#   from Debian 12 packages with debootstrap (Debian's Python 3.11.2, `python` and `pip` on
#   PATH, pip reaching the package index through this machine's CA bundle and pip settings).
#   The stand-in is for machines that reach Debian's and PyPI's registries but no container
#   registry; the recipe is the development machines' ../shared/docker/offline-base.sh.
#
# Then build with Debian's client, which has BuildKit built in (another `docker` earlier on
# PATH may lack buildx and refuse DOCKER_BUILDKIT=1):
#   DOCKER_BUILDKIT=1 /usr/bin/docker build --network host -t jouletune:dev .
set -euo pipefail
BASE=${1:-python:3.11-slim}
DOCKER=/usr/bin/docker
ROOTFS=${ROOTFS:-/tmp/jouletune-base-rootfs}
export DEBIAN_FRONTEND=noninteractive
say() { echo "docker-setup: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  if "$DOCKER" info >/dev/null 2>&1 && "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    say "daemon up, $BASE present"; exit 0
  fi
  say "needs root (installs docker.io, starts dockerd, makes $BASE)"; exit 1
fi

apt_install() {
  say "installing $* from Debian"
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

[ -x "$DOCKER" ] && command -v dockerd >/dev/null || apt_install docker.io

if ! "$DOCKER" info >/dev/null 2>&1; then
  say "starting dockerd (log /tmp/dockerd.log)"
  cd /  # the daemon outlives this script; keep it out of the checkout
  setsid dockerd >/tmp/dockerd.log 2>&1 </dev/null &
  echo $! >/tmp/dockerd.pid
  for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log >&2; say "dockerd did not start"; exit 1; }
fi

if "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
  say "daemon up, $BASE present"; exit 0
fi
if timeout 120 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
  say "daemon up, $BASE pulled"; exit 0
fi

say "no registry answers for $BASE: building a stand-in from Debian 12 packages"
command -v debootstrap >/dev/null || apt_install debootstrap
# The same Debian mirror apt uses on this machine.
MIRROR=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
rm -rf "$ROOTFS"
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >/tmp/debootstrap.log 2>&1 || {
  tail -20 /tmp/debootstrap.log >&2; say "debootstrap failed"; exit 1; }
# Behave like the official image: `python` and `pip` on PATH, pip allowed to install.
rm -f "$ROOTFS"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
printf '#!/bin/sh\nexec python3 -m pip "$@"\n' >"$ROOTFS/usr/local/bin/pip"
chmod +x "$ROOTFS/usr/local/bin/pip"
# Reach the package index the way this machine does (its CA bundle and pip settings).
cp /etc/ssl/certs/ca-certificates.crt "$ROOTFS/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then cp /etc/pip.conf "$ROOTFS/etc/pip.conf"; fi
if [ -f /etc/xdg/pip/constraints.txt ]; then
  mkdir -p "$ROOTFS/etc/xdg/pip" && cp /etc/xdg/pip/constraints.txt "$ROOTFS/etc/xdg/pip/"
fi
tar -C "$ROOTFS" -c . | "$DOCKER" import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE" >/dev/null
rm -rf "$ROOTFS"
say "daemon up, $BASE built from Debian packages (a stand-in: Debian's Python, not python.org's)"
