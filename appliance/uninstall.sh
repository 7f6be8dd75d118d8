#!/usr/bin/env bash
# Removes ESS from a systemd Linux box. Safe to run again.
#
#   sudo appliance/uninstall.sh            stop and remove the service, binary, essctl, docs;
#                                          KEEP /etc/ess, /var/lib/ess (the feed), the drop
#                                          folder and user ess, so a reinstall carries on
#   sudo appliance/uninstall.sh --purge    also delete those, and user and group ess
#   appliance/uninstall.sh --root DIR ...  act below DIR (also: DESTDIR=DIR); no systemctl,
#                                          no userdel
#
# --purge deletes the feed: every event not yet delivered is lost. Back it up first with
#   essctl backup --config /etc/ess/ess.yml --to /root/ess-final.redb

set -euo pipefail

readonly UNIT_NAME=ess.service

usage() {
    cat <<EOF
usage: $(basename "$0") [--root DIR] [--purge]

Removes the ESS service and binary; keeps config and data unless --purge.
  --root DIR   act below DIR instead of / (same as DESTDIR=DIR)
  --purge      also delete /etc/ess, /var/lib/ess (the feed!), /var/spool/ess and user ess
  -h, --help   this text
EOF
}

say() {
    echo "uninstall.sh: $*"
}

ROOT=${DESTDIR:-}
PURGE=no
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
        --purge)
            PURGE=yes
            shift
            ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            echo "uninstall.sh: unknown argument $1" >&2
            usage >&2
            exit 2
            ;;
    esac
done

ROOT=${ROOT%/}
STAGED=no
if [ -n "$ROOT" ]; then
    STAGED=yes
    if [ ! -d "$ROOT" ]; then
        echo "uninstall.sh: error: $ROOT is not a directory" >&2
        exit 1
    fi
    ROOT=$(cd "$ROOT" && pwd)
fi
readonly ROOT STAGED PURGE

if [ "$STAGED" = no ] && [ "$(id -u)" -ne 0 ]; then
    echo "uninstall.sh: error: run as root (sudo $0)" >&2
    exit 1
fi

# Removes PATH (below ROOT) if present and says so.
remove() {
    local path=$ROOT$1
    if [ -e "$path" ] || [ -L "$path" ]; then
        rm -rf -- "$path"
        say "removed $1"
    fi
}

if [ "$STAGED" = no ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    if systemctl is-active --quiet "$UNIT_NAME" || systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
        # SIGTERM: ess finishes in-flight commits and writes before it exits.
        systemctl disable --now "$UNIT_NAME"
        say "stopped and disabled $UNIT_NAME"
    fi
fi

remove /etc/systemd/system/$UNIT_NAME
remove /usr/local/bin/ess
if [ "$(readlink "$ROOT/usr/local/bin/essctl" 2>/dev/null || true)" = ess ]; then
    remove /usr/local/bin/essctl
fi
remove /usr/local/share/doc/ess
remove /usr/local/share/man/man1/ess.1
remove /usr/local/share/bash-completion/completions/ess
remove /usr/local/share/zsh/site-functions/_ess

if [ "$PURGE" = yes ]; then
    remove /etc/systemd/system/$UNIT_NAME.d
    remove /etc/ess
    remove /var/lib/ess
    remove /var/spool/ess
    if [ "$STAGED" = no ]; then
        if getent passwd ess >/dev/null; then
            userdel ess
            say "removed user ess"
        fi
        if getent group ess >/dev/null; then
            groupdel ess
            say "removed group ess"
        fi
    fi
else
    say "kept /etc/ess (config, certificates, maps), /var/lib/ess (the feed), /var/spool/ess"
    say "and user ess; a later install.sh carries on from them. Delete them with --purge."
fi

if [ "$STAGED" = no ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
fi
say "done"
