#!/usr/bin/env bash
# Installs or upgrades ESS on a systemd Linux box. Safe to run again at any time.
#
#   sudo appliance/install.sh [BINARY]            install / upgrade on this machine
#   appliance/install.sh --root DIR [BINARY]      stage into DIR (also: DESTDIR=DIR)
#
# BINARY defaults to ./target/release/ess (then to the ess next to this script, as in a
# release tarball). What it does, each step only if needed:
#   - user and group `ess` (system, no login, home /var/lib/ess);
#   - /etc/ess (0750 root:ess), /etc/ess/tls and /etc/ess/maps (0750 root:ess),
#     /var/lib/ess (0700 ess:ess), /var/spool/ess/out (0750 ess:ess, the default drop folder);
#   - /usr/local/bin/ess (replaced atomically: copy to a temp name, then rename) and the
#     `essctl` symlink;
#   - /etc/systemd/system/ess.service (always the shipped one: local changes go in drop-ins);
#   - /etc/ess/ess.yml from the template, only if absent; the template itself always goes
#     to /etc/ess/ess.yml.example;
#   - the runbook to /usr/local/share/doc/ess/README-operations.md.
# It never overwrites an existing config, map, certificate or anything in /var/lib/ess. On
# an upgrade of a running service it checks the config with the new binary first, then
# replaces the binary and restarts the service (SIGTERM lets it finish in-flight work; the
# feed in /var/lib/ess/ess.redb is kept as is).
#
# With --root/DESTDIR nothing outside DIR is touched: no user is created, nothing is
# chown'ed and systemctl is not called (modes are still set).

set -euo pipefail
# Parent folders this script creates (/usr/local/share/doc, ...) get the usual modes.
umask 022

readonly UNIT_NAME=ess.service
SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SCRIPT_DIR

usage() {
    cat <<EOF
usage: $(basename "$0") [--root DIR] [BINARY]

Installs or upgrades ESS. BINARY defaults to ./target/release/ess.
  --root DIR   install below DIR instead of / (same as DESTDIR=DIR); skips user
               creation, chown and systemctl
  -h, --help   this text
EOF
}

die() {
    echo "install.sh: error: $*" >&2
    exit 1
}

say() {
    echo "install.sh: $*"
}

ROOT=${DESTDIR:-}
BINARY=
while [ $# -gt 0 ]; do
    case "$1" in
        --root)
            [ $# -ge 2 ] || { usage >&2; exit 2; }
            ROOT=$2
            shift 2
            ;;
        --root=*)
            ROOT=${1#--root=}
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "install.sh: unknown option $1" >&2
            usage >&2
            exit 2
            ;;
        *)
            [ -z "$BINARY" ] || { echo "install.sh: more than one BINARY given" >&2; usage >&2; exit 2; }
            BINARY=$1
            shift
            ;;
    esac
done

if [ -z "$BINARY" ]; then
    for candidate in ./target/release/ess "$SCRIPT_DIR/../target/release/ess" "$SCRIPT_DIR/ess"; do
        if [ -f "$candidate" ]; then
            BINARY=$candidate
            break
        fi
    done
    [ -n "$BINARY" ] || die "no binary given and ./target/release/ess not found (build it with: cargo build --release)"
fi
[ -f "$BINARY" ] || die "binary $BINARY does not exist"
[ -x "$BINARY" ] || die "binary $BINARY is not executable"

# "/" and "" both mean the real system.
ROOT=${ROOT%/}
STAGED=no
if [ -n "$ROOT" ]; then
    STAGED=yes
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd)
fi
readonly ROOT STAGED

find_shipped() {
    local name=$1
    shift
    local candidate
    for candidate in "$@"; do
        if [ -f "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    die "cannot find $name next to this script (looked in: $*)"
}
UNIT_SRC=$(find_shipped "$UNIT_NAME" "$SCRIPT_DIR/../systemd/$UNIT_NAME" "$SCRIPT_DIR/$UNIT_NAME")
TEMPLATE_SRC=$(find_shipped ess.yml.example "$SCRIPT_DIR/ess.yml.example")
RUNBOOK_SRC=$(find_shipped README-operations.md "$SCRIPT_DIR/README-operations.md")
readonly UNIT_SRC TEMPLATE_SRC RUNBOOK_SRC

if [ "$STAGED" = no ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0), or stage into a directory with --root DIR"
fi

# ESS_SYSTEMCTL names a stand-in for systemctl; the tests use it to drive the upgrade
# logic (check, swap, restart) inside a staged root. Unset on a real box.
SYSTEMCTL=${ESS_SYSTEMCTL:-systemctl}
readonly SYSTEMCTL

# True when we talk to a service manager: systemd runs this machine and we install onto
# it, or a stand-in was given.
have_systemd() {
    [ -n "${ESS_SYSTEMCTL:-}" ] && return 0
    [ "$STAGED" = no ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]
}

# Sets owner (only on the real system) and mode of an ESS-owned path.
own() {
    local owner=$1 mode=$2 path=$3
    chmod "$mode" "$path"
    if [ "$STAGED" = no ]; then
        chown "$owner" "$path"
    fi
}

# Creates a directory that belongs to ESS and brings its owner and mode to what the unit
# expects. Its contents are never touched.
ess_dir() {
    local owner=$1 mode=$2 path=$ROOT$3
    if [ ! -d "$path" ]; then
        mkdir -p "$path"
        say "created $3"
    fi
    own "$owner" "$mode" "$path"
}

# Copies SRC to DEST (mode MODE) through a temp file in DEST's folder and a rename, so DEST
# is at every instant either the old or the new file, never a partial one. Returns 0 when
# DEST changed, 1 when it already had this content.
replace_file() {
    local src=$1 dest=$2 mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 1
    fi
    local tmp
    tmp=$(mktemp "$(dirname "$dest")/.$(basename "$dest").new.XXXXXX")
    if ! { cp "$src" "$tmp" && chmod "$mode" "$tmp" && sync "$tmp" && mv -f "$tmp" "$dest"; }; then
        rm -f "$tmp"
        die "cannot install $dest"
    fi
    return 0
}

# --- user and group ---------------------------------------------------------------------
if [ "$STAGED" = no ]; then
    if ! getent group ess >/dev/null; then
        groupadd --system ess
        say "created group ess"
    fi
    if ! getent passwd ess >/dev/null; then
        nologin=/usr/sbin/nologin
        [ -x "$nologin" ] || nologin=/sbin/nologin
        useradd --system --gid ess --home-dir /var/lib/ess --no-create-home \
            --shell "$nologin" --comment "ESS External System Sync" ess
        say "created user ess"
    fi
else
    say "staging into $ROOT: no user, no chown, no systemctl"
fi

# --- directories ------------------------------------------------------------------------
ess_dir root:ess 0750 /etc/ess
ess_dir root:ess 0750 /etc/ess/tls
ess_dir root:ess 0750 /etc/ess/maps
ess_dir ess:ess 0700 /var/lib/ess
ess_dir root:root 0755 /var/spool/ess
# The drop folder is the operator's interface with the legacy system: created once, then
# its owner and mode are theirs to change (e.g. group of the legacy reader).
if [ ! -d "$ROOT/var/spool/ess/out" ]; then
    mkdir -p "$ROOT/var/spool/ess/out"
    own ess:ess 0750 "$ROOT/var/spool/ess/out"
    say "created /var/spool/ess/out"
fi
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc/systemd/system" "$ROOT/usr/local/share/doc/ess"

# --- binary -----------------------------------------------------------------------------
was_active=no
if have_systemd && "$SYSTEMCTL" is-active --quiet "$UNIT_NAME"; then
    was_active=yes
fi

binary_changed=no
installed=$ROOT/usr/local/bin/ess
if ! [ -f "$installed" ] || ! cmp -s "$BINARY" "$installed"; then
    if [ "$was_active" = yes ] && [ -f "$ROOT/etc/ess/ess.yml" ]; then
        # Refuse an upgrade whose binary would not start with the current config: the
        # running service keeps going on the old binary.
        if ! "$BINARY" check --config "$ROOT/etc/ess/ess.yml"; then
            die "the new binary rejects /etc/ess/ess.yml (see above); nothing was changed"
        fi
    fi
    replace_file "$BINARY" "$installed" 0755 || true
    binary_changed=yes
    say "installed /usr/local/bin/ess"
fi
if [ "$(readlink "$ROOT/usr/local/bin/essctl" 2>/dev/null || true)" != ess ]; then
    ln -sfn ess "$ROOT/usr/local/bin/essctl"
    say "linked /usr/local/bin/essctl -> ess"
fi

# --- unit, config, docs -----------------------------------------------------------------
unit_changed=no
fresh_config=no
if replace_file "$UNIT_SRC" "$ROOT/etc/systemd/system/$UNIT_NAME" 0644; then
    unit_changed=yes
    say "installed /etc/systemd/system/$UNIT_NAME (local changes belong in: systemctl edit ess)"
fi

if replace_file "$TEMPLATE_SRC" "$ROOT/etc/ess/ess.yml.example" 0640; then
    say "installed /etc/ess/ess.yml.example"
fi
own root:ess 0640 "$ROOT/etc/ess/ess.yml.example"
if [ ! -e "$ROOT/etc/ess/ess.yml" ]; then
    tmp=$(mktemp "$ROOT/etc/ess/.ess.yml.new.XXXXXX")
    cp "$TEMPLATE_SRC" "$tmp"
    own root:ess 0640 "$tmp"
    mv -n "$tmp" "$ROOT/etc/ess/ess.yml"
    rm -f "$tmp"
    say "wrote /etc/ess/ess.yml from the template: edit it before starting the service"
    fresh_config=yes
else
    say "kept the existing /etc/ess/ess.yml"
fi

replace_file "$RUNBOOK_SRC" "$ROOT/usr/local/share/doc/ess/README-operations.md" 0644 || true

# --- service ----------------------------------------------------------------------------
if have_systemd; then
    if [ "$unit_changed" = yes ]; then
        "$SYSTEMCTL" daemon-reload
    fi
    if [ "$was_active" = yes ] && { [ "$binary_changed" = yes ] || [ "$unit_changed" = yes ]; }; then
        say "restarting $UNIT_NAME (the feed in /var/lib/ess is kept)"
        "$SYSTEMCTL" restart "$UNIT_NAME"
        "$SYSTEMCTL" is-active --quiet "$UNIT_NAME" || die "$UNIT_NAME did not come back: journalctl -u ess -n 50"
        say "upgrade done; $UNIT_NAME is running"
    elif [ "$was_active" = yes ]; then
        say "nothing changed; $UNIT_NAME keeps running"
    elif [ "$fresh_config" = yes ]; then
        say "done. Next: put the certificates in /etc/ess/tls, a map in /etc/ess/maps, check with"
        say "  ess check --config /etc/ess/ess.yml && systemctl enable --now ess"
    else
        say "done; $UNIT_NAME is not running (start it with: systemctl start ess)"
    fi
elif [ "$STAGED" = no ]; then
    say "done; systemd is not running here, so no service was started"
else
    say "done"
fi
