#!/bin/sh
# Installs the Debian packages ferry needs to build and test.
#   --install     always run apt-get install (make deps)
#   --if-missing  only when a package is missing (make check, make demo)
set -e
PKGS="build-essential pkg-config libsodium-dev libzstd-dev libsqlite3-dev
libcryptsetup-dev libblkid-dev libjansson-dev zlib1g-dev libnbd-dev libssl-dev
cryptsetup-bin e2fsprogs sqlite3 util-linux restic zstd time python3
qemu-utils nbdkit libnbd-bin clang libclang-rt-14-dev rsync"
missing=""
for p in $PKGS; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
		missing="$missing $p"
done
if [ "$1" = "--if-missing" ] && [ -z "$missing" ]; then
	exit 0
fi
[ "$1" = "--install" ] && missing="$PKGS"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing$missing" >&2
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
