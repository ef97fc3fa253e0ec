#!/bin/sh
# Makes a Debian base image without an image registry: debootstrap (minbase) from the Debian
# mirror apt on this machine already uses, then `docker import`. Same release as this machine,
# so binaries built here run in it. The Dockerfiles take it as their BASE build argument.
#
#   docker/base-image.sh [image]      # default: local/debian:<this machine's codename>
set -eu
. /etc/os-release
codename=${VERSION_CODENAME:?/etc/os-release names no Debian codename}
image=${1:-local/debian:$codename}
mirror=$(apt-get indextargets --format '$(REPO_URI)' "Codename: $codename" 'Label: Debian' \
  'Identifier: Packages' | head -n 1)
if [ -z "$mirror" ]; then
  echo "apt has no Debian $codename mirror configured (run apt-get update?)" >&2
  exit 1
fi
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
echo "debootstrap $codename from $mirror"
debootstrap --variant=minbase "$codename" "$rootfs" "$mirror" >/dev/null
tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$image" >/dev/null
echo "built $image"
