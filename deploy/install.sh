#!/usr/bin/env bash
# Install ductile on a systemd host: its users (systemd-sysusers), its directories with
# their modes and owners (systemd-tmpfiles), the package in its own venv under
# /opt/ductile/venv, and the unit. Idempotent: run it again after every upgrade.
#
# It never writes a secret, a vault or a config: those are the operator's next steps,
# printed at the end. The sysusers/tmpfiles/unit files come from deploy/systemd/, which
# are rendered from deploy/config/*.yaml; an installed copy that differs (one you
# rendered from your own config with `ductile deploy render`) is kept unless --replace.
set -euo pipefail
umask 022   # the venv and the plugin root must be readable by the accounts plugins drop to

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [--root DIR] [--dry-run] [--no-venv] [--with-admin] [--replace]

  --root DIR    stage into DIR instead of / (a tree for an image or a test); no systemctl
  --dry-run     print what would be done and change nothing (needs no root)
  --no-venv     do not create /opt/ductile/venv or pip-install the package into it
  --with-admin  also install the unconfined admin instance (ductile-admin.*)
  --replace     overwrite installed sysusers/tmpfiles/unit files that differ from deploy/systemd/
Environment: PYTHON=/path/to/python3 picks the interpreter for the venv (checked by
deploy/find-python.sh: >= 3.11 and executable by every account).
EOF
}

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SHIPPED="$SRC/deploy/systemd"
ROOT=""
DRY_RUN=0
VENV_WANTED=1
WITH_ADMIN=0
REPLACE=0
VENV=/opt/ductile/venv
CHANGES=0

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory (fix: --root /path/to/tree)"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --dry-run) DRY_RUN=1; shift ;;
        --no-venv) VENV_WANTED=0; shift ;;
        --with-admin) WITH_ADMIN=1; shift ;;
        --replace) REPLACE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option $1 (fix: see deploy/install.sh --help)" ;;
    esac
done

if [ -n "$ROOT" ]; then
    case "$ROOT" in /*) ;; *) die "--root $ROOT is not absolute (fix: pass an absolute path)" ;; esac
    ROOT=${ROOT%/}
    [ -n "$ROOT" ] || die "--root / is the host itself (fix: leave --root out to install on this host)"
fi
STAGING=$([ -n "$ROOT" ] && echo 1 || echo 0)

if [ "$DRY_RUN" -eq 0 ] && [ "$(id -u)" -ne 0 ]; then
    die "must run as root: it creates system users and gives directories to other uids (fix: run it as root, or preview with --dry-run)"
fi
for tool in systemd-sysusers systemd-tmpfiles; do
    command -v "$tool" >/dev/null 2>&1 \
        || die "$tool not found: the users and directories are made by systemd's own tools (fix: install systemd, e.g. apt-get install systemd)"
done

INSTANCES=(ductile)
[ "$WITH_ADMIN" -eq 1 ] && INSTANCES+=(ductile-admin)
for inst in "${INSTANCES[@]}"; do
    for f in "$inst.sysusers.conf" "$inst.tmpfiles.conf" "$inst.service"; do
        [ -f "$SHIPPED/$f" ] || die "$SHIPPED/$f is missing (fix: run from a complete ductile checkout)"
    done
done

# run CMD...: do it, or in a dry run only say it.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then say "would run: $*"; return 0; fi
    say "run: $*"
    "$@"
}

# place SRC DEST MODE: install a shipped file, keeping an operator's differing copy.
place() {
    local src=$1 dest=$2 mode=$3
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        say "unchanged: ${dest#"$ROOT"}"
        return 0
    fi
    if [ -e "$dest" ] && [ "$REPLACE" -eq 0 ]; then
        say "kept: ${dest#"$ROOT"} differs from ${src#"$SRC/"} (yours, e.g. rendered from your config; --replace overwrites it)"
        return 0
    fi
    CHANGES=1
    run install -D -m "$mode" -o root -g root "$src" "$dest"
}

# tool_root: the --root argument for systemd's tools when staging.
tool_root() { if [ "$STAGING" -eq 1 ]; then printf -- '--root=%s' "$ROOT"; fi; }

# passwd_field DB NAME FIELD: one field of NAME's entry in $ROOT/etc/DB ('' if absent).
passwd_field() { awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; exit }' "$ROOT/etc/$1" 2>/dev/null || true; }
# name_of DB ID: the name owning numeric ID in $ROOT/etc/DB ('' if none).
name_of() { awk -F: -v id="$2" '$3 == id { print $1; exit }' "$ROOT/etc/$1" 2>/dev/null || true; }

# verify_ids CONF: every fixed uid/gid in a sysusers file must be what the passwd/group
# files now say. systemd-sysusers exits 0 when a fixed id is taken (it picks another, or
# skips the user); a plugin would then drop to a uid that belongs to someone else.
verify_ids() {
    local conf=$1 shown=${1#"$ROOT"} type name id uid gid have holder
    local fix="fix: choose free ids in the config's accounts: map and re-render sysusers and tmpfiles, or remove the stale entry, then rerun"
    while read -r type name id _; do
        case "$type" in u|g) ;; *) continue ;; esac
        [ "$id" = "-" ] && continue
        if [ "$type" = g ]; then
            have=$(passwd_field group "$name" 3)
            holder=$(name_of group "$id")
            [ "$have" = "$id" ] || die "$shown: group $name has gid ${have:-none} in $ROOT/etc/group, not $id as written${holder:+ (gid $id belongs to $holder)}; plugins would run with a group that is not theirs ($fix)"
            continue
        fi
        uid=${id%%:*}
        gid=${id#*:}
        have=$(passwd_field passwd "$name" 3)
        holder=$(name_of passwd "$uid")
        [ "$have" = "$uid" ] || die "$shown: user $name has uid ${have:-none} in $ROOT/etc/passwd, not $uid as written${holder:+ (uid $uid belongs to $holder)}; plugins dropped to $uid would not run as $name ($fix)"
        if [ "$gid" != "$id" ]; then
            have=$(passwd_field passwd "$name" 4)
            [ "$have" = "$gid" ] || die "$shown: user $name has primary gid ${have:-none} in $ROOT/etc/passwd, not $gid as written ($fix)"
        fi
    done < "$conf"
}

# describe PATH: "mode owner:group (uid:gid)" as it is now, names from $ROOT's passwd/group.
describe() {
    local p=$1 mode uid gid user group
    [ -e "$p" ] || { echo "MISSING"; return 0; }
    read -r mode uid gid < <(stat -c '%a %u %g' "$p")
    user=$(name_of passwd "$uid")
    group=$(name_of group "$gid")
    printf '%04o %s:%s (%s:%s)' "0$mode" "${user:-$uid}" "${group:-$gid}" "$uid" "$gid"
}

[ "$DRY_RUN" -eq 1 ] && say "dry run: nothing will be changed"
[ "$STAGING" -eq 1 ] && say "staging into $ROOT"
if [ "$STAGING" -eq 1 ] && [ ! -d "$ROOT" ]; then run install -d -m 0755 "$ROOT"; fi

# 1. users, then directories: tmpfiles resolves the gateway user by name.
for inst in "${INSTANCES[@]}"; do
    place "$SHIPPED/$inst.sysusers.conf" "$ROOT/etc/sysusers.d/$inst.conf" 0644
    place "$SHIPPED/$inst.tmpfiles.conf" "$ROOT/etc/tmpfiles.d/$inst.conf" 0644
done
for inst in "${INSTANCES[@]}"; do
    # shellcheck disable=SC2046  # tool_root prints zero or one word
    run systemd-sysusers $(tool_root) "$inst.conf"
    if [ "$DRY_RUN" -eq 0 ]; then
        verify_ids "$ROOT/etc/sysusers.d/$inst.conf"
    fi
done
for inst in "${INSTANCES[@]}"; do
    # shellcheck disable=SC2046
    run systemd-tmpfiles --create $(tool_root) "$inst.conf"
done

# 2. the package, in a venv every account can execute (plugins and the kill helper run
#    the same interpreter after the drop), never under a 0700 home.
if [ "$VENV_WANTED" -eq 1 ]; then
    PY=$("$SRC/deploy/find-python.sh" ${PYTHON:+"$PYTHON"}) || die "no usable Python for $VENV (fix: see the find-python line above; PYTHON=/usr/bin/python3.11 picks one)"
    run install -d -m 0755 -o root -g root "$ROOT/opt/ductile"
    if [ -x "$ROOT$VENV/bin/python" ]; then
        say "venv exists: $VENV (upgrading the package in it)"
    else
        run "$PY" -m venv "$ROOT$VENV"
    fi
    # build from a scratch copy: an in-tree build would leave root-owned build/ and
    # *.egg-info in the checkout, and a stale build/lib can carry deleted modules along
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would run: $ROOT$VENV/bin/python -m pip install --upgrade <copy of $SRC>"
    else
        BUILD=$(mktemp -d)
        trap 'rm -rf "$BUILD"' EXIT
        tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
            --exclude=__pycache__ -cf - . | tar -C "$BUILD" -xf -
        run "$ROOT$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$BUILD"
    fi
    if [ "$DRY_RUN" -eq 0 ] && [ "$STAGING" -eq 0 ]; then
        # find-python.sh checks the interpreter the venv links to; the venv's own
        # directories (site-packages) must be reachable too
        d=$VENV/lib
        while [ "$d" != "/" ]; do
            case "$(stat -c %A "$d")" in ?????????[xt]) ;; *) die "$d is not traversable by other users, so accounts cannot import the package (fix: chmod o+x $d)" ;; esac
            d=$(dirname "$d")
        done
        "$SRC/deploy/find-python.sh" "$VENV/bin/python" >/dev/null \
            || die "$VENV/bin/python is not executable by every account (fix: make $VENV and its parents world-traversable, chmod o+rx)"
    fi
    if [ -e "$ROOT/usr/local/bin/ductile" ] && [ ! -L "$ROOT/usr/local/bin/ductile" ]; then
        say "kept: /usr/local/bin/ductile is not a symlink into $VENV; left alone"
    else
        run install -d -m 0755 "$ROOT/usr/local/bin"
        run ln -sfn "$VENV/bin/ductile" "$ROOT/usr/local/bin/ductile"
    fi
else
    say "skipped: $VENV (--no-venv); the unit's ExecStart expects $VENV/bin/ductile"
fi

# 3. the units, and the manual pages their Documentation= lines point at
for inst in "${INSTANCES[@]}"; do
    place "$SHIPPED/$inst.service" "$ROOT/etc/systemd/system/$inst.service" 0644
done
for page in "$SRC"/man/*.[15]; do
    place "$page" "$ROOT/usr/local/share/man/man${page##*.}/$(basename "$page")" 0644
done
if [ "$STAGING" -eq 1 ]; then
    say "skipped: systemctl daemon-reload (staging into $ROOT)"
elif [ ! -d /run/systemd/system ]; then
    say "skipped: systemctl daemon-reload (systemd is not PID 1 here: no /run/systemd/system)"
elif [ "$CHANGES" -eq 1 ] || [ "$DRY_RUN" -eq 1 ]; then
    run systemctl daemon-reload
fi

# 4. summary: what each directory should be and what it is
echo
say "layout (want -> have):"
for inst in "${INSTANCES[@]}"; do
    conf="$ROOT/etc/tmpfiles.d/$inst.conf"
    [ -f "$conf" ] || conf="$SHIPPED/$inst.tmpfiles.conf"
    while read -r type path mode user group _; do
        [ "$type" = d ] || continue
        if [ "$DRY_RUN" -eq 1 ]; then
            printf '  %-44s %s %s:%s\n' "$path" "$mode" "$user" "$group"
        else
            printf '  %-44s %s %s:%s -> %s\n' "$path" "$mode" "$user" "$group" "$(describe "$ROOT$path")"
        fi
    done < "$conf"
done
printf '  %-44s %s\n' "$VENV" "$([ "$VENV_WANTED" -eq 1 ] && echo "0755 root:root, the package" || echo "skipped (--no-venv)")"
for inst in "${INSTANCES[@]}"; do
    printf '  %-44s %s\n' "/etc/systemd/system/$inst.service" "the unit"
done

cat <<EOF

Next steps (as root; the gateway's files must belong to the ductile user, so commands
that write them run as it):
  1. write the config:  install -m 0600 -o ductile -g ductile $SRC/deploy/config/ductile.yaml /etc/ductile/config.yaml
     (changed an account's uid/gid/state_dir? re-render: ductile deploy render sysusers|tmpfiles|unit --config /etc/ductile)
  2. create the vault:   runuser -u ductile -- ductile vault init --config /etc/ductile
  3. lock the plugins:   runuser -u ductile -- ductile plugin lock --all --config /etc/ductile   (then again with the printed code)
  4. check:              runuser -u ductile -- ductile doctor --config /etc/ductile
  5. prove the wall, with the unit's two capabilities:
       setpriv --reuid=ductile --regid=ductile --init-groups --inh-caps=-all,+setuid,+setgid \\
               --ambient-caps=+setuid,+setgid --bounding-set=-all,+setuid,+setgid -- ductile account verify --config /etc/ductile
  6. start:              systemctl enable --now ductile.service   (journalctl -u ductile for the posture line)
EOF
[ "$WITH_ADMIN" -eq 1 ] && cat <<EOF
  Admin instance: the same with ductile-admin and /etc/ductile-admin (no accounts, so no
  account verify); its config starts from $SRC/deploy/config/ductile-admin.yaml.
EOF
exit 0
