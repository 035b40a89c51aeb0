#!/usr/bin/env bash
# A Debian 12 base with Python 3.11 for the project's image and the PostgreSQL image, made without
# an image registry (these machines reach Debian's mirror, not Docker Hub): debootstrap from the
# mirror apt already uses, `docker import`, ~90 s. Where a registry is reachable, the Dockerfiles'
# defaults (python:3.11-slim-bookworm, debian:bookworm-slim) need none of this.
#
#   deploy/base-image.sh [TAG]        # default local/debian-python:bookworm; does nothing if it exists
set -euo pipefail
tag=${1:-local/debian-python:bookworm}
if docker image inspect "$tag" >/dev/null 2>&1; then
    echo "$tag exists"
    exit 0
fi
mirror=$(apt-get indextargets --format '$(REPO_URI)' | grep -v security | sort -u | head -1)
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
    bookworm "$rootfs" "$mirror" >/dev/null
# What an image does not need: downloaded packages, package lists, documentation (~100 MB).
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*
tar -C "$rootfs" -c . | docker import - "$tag" >/dev/null
echo "built $tag"
