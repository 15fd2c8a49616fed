#!/bin/sh
# A Debian 12 tree that boots systemd as PID 1 under systemd-nspawn, for
# tests/daemon/test_systemd_live.py. Run as root:
#
#   scripts/systemd-tree.sh [TREE]        (default /var/cache/syncd-test/debian-12)
#
# Installs what it needs on the host with apt (debootstrap, systemd-container),
# then builds TREE with debootstrap from the Debian mirror apt already uses
# ($MIRROR overrides it). The tree is cached: it is rebuilt only when it is
# missing or this script (its recipe) has changed. The last line of stdout is
# the tree's path. Nothing here needs the network once the tree exists.
set -eu

TREE=${1:-/var/cache/syncd-test/debian-12}
SUITE=bookworm
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-venv

say() { echo "systemd-tree: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
    say "must run as root (debootstrap, systemd-nspawn)"
    exit 77
fi

need=""
command -v debootstrap >/dev/null 2>&1 || need="$need debootstrap"
command -v systemd-nspawn >/dev/null 2>&1 || need="$need systemd-container"
if [ -n "$need" ]; then
    say "installing$need"
    apt-get update -q >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q $need >&2
fi

# The recipe is this file: a changed script rebuilds the tree.
RECIPE=$(sha256sum "$0" | cut -d' ' -f1)
if [ -f "$TREE/.syncd-recipe" ] && [ "$(cat "$TREE/.syncd-recipe")" = "$RECIPE" ]; then
    echo "$TREE"
    exit 0
fi

mirror() {
    # The first Debian archive URI in apt's sources (deb822 or one-line format),
    # not the security archive.
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f"
    done
}
MIRROR=${MIRROR:-$(mirror | grep -v -- '-security' | grep -i debian | head -n 1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

say "building $TREE from $MIRROR ($SUITE, minbase + $PACKAGES); this takes a few minutes"
mkdir -p "$(dirname "$TREE")"
rm -rf "$TREE.new"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$TREE.new" "$MIRROR" >&2

# Boot quickly and quietly in a container: a fresh machine id at each boot,
# nothing waiting for a network or a console that is not there, no apt timers.
: > "$TREE.new/etc/machine-id"
echo syncd-test > "$TREE.new/etc/hostname"
for unit in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
            e2scrub_all.timer fstrim.timer systemd-networkd-wait-online.service \
            getty@tty1.service; do
    ln -sf /dev/null "$TREE.new/etc/systemd/system/$unit"
done
rm -rf "$TREE.new/var/cache/apt/archives/"*.deb "$TREE.new/var/lib/apt/lists/"* 2>/dev/null || true

rm -rf "$TREE"
mv "$TREE.new" "$TREE"
echo "$RECIPE" > "$TREE/.syncd-recipe"
say "built $TREE"
echo "$TREE"
