#!/usr/bin/env bash
# Install or upgrade ductile on a systemd host: its users (systemd-sysusers), its
# directories with their modes and owners (systemd-tmpfiles), the package in its own venv
# under /opt/ductile/venv, the units (the gateway's, and the daily backup's service and
# timer) and the manual pages. Idempotent: run it again after every upgrade.
#
# Order matters. Nothing is written before every fixed uid and gid has been checked
# against /etc/passwd and /etc/group (systemd-sysusers silently picks another id when one
# is taken). Every file it installs is recorded with its hash in /opt/ductile/install-manifest,
# so a later run upgrades a file nobody touched and keeps, with a message, one that was
# changed since. It never writes a secret, a vault or a config.
set -euo pipefail
umask 022   # the venv and the plugin root must be readable by the accounts plugins drop to

usage() {
    cat <<'EOF'
Usage: deploy/install.sh [--root DIR] [--dry-run] [--config FILE] [--no-venv] [--with-admin] [--replace]

  --root DIR     stage into DIR instead of /: a tree that works once copied to / (the venv's
                 scripts point at /opt/ductile/venv, not at DIR); no systemctl
  --dry-run      check the ids and print what would be done; change nothing (needs no root)
  --config FILE  render the sysusers, tmpfiles and unit files from FILE (your draft of
                 /etc/ductile/config.yaml, e.g. with other account ids) instead of shipping
                 deploy/systemd/; without it, /etc/ductile/config.yaml is used once it exists
  --no-venv      do not create /opt/ductile/venv or pip-install the package into it
  --with-admin   also install the unconfined admin instance (ductile-admin.*)
  --replace      overwrite installed files you changed (they are kept, with the new
                 version beside them as FILE.ductile-new, otherwise)
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
CONFIG=""
VENV=/opt/ductile/venv
MANIFEST_PATH=/opt/ductile/install-manifest
NEW_SUFFIX=.ductile-new
CHANGES=0

say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory (fix: --root /path/to/tree)"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --config) [ $# -ge 2 ] || die "--config needs a file (fix: --config /root/ductile.yaml)"; CONFIG=$2; shift 2 ;;
        --config=*) CONFIG=${1#--config=}; shift ;;
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
if [ -n "$CONFIG" ]; then
    [ -d "$CONFIG" ] && CONFIG=$CONFIG/config.yaml
    [ -f "$CONFIG" ] || die "--config $CONFIG is not a file (fix: give the path of your config draft)"
    CONFIG=$(cd "$(dirname "$CONFIG")" && pwd)/$(basename "$CONFIG")
fi

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
    for f in "$inst.sysusers.conf" "$inst.tmpfiles.conf" "$inst.service" "$inst-backup.service" "$inst-backup.timer"; do
        [ -f "$SHIPPED/$f" ] || die "$SHIPPED/$f is missing (fix: run from a complete ductile checkout)"
    done
done

# scratch space, made on first use (a dry run that renders nothing creates nothing)
WORK=""
need_work() {
    [ -n "$WORK" ] && return 0
    WORK=$(mktemp -d)
    trap 'rm -rf "$WORK"' EXIT
}

# run CMD...: do it, or in a dry run only say it.
run() {
    if [ "$DRY_RUN" -eq 1 ]; then say "would run: $*"; return 0; fi
    say "run: $*"
    "$@"
}

# tool_root: the --root argument for systemd's tools when staging.
tool_root() { if [ "$STAGING" -eq 1 ]; then printf -- '--root=%s' "$ROOT"; fi; }
# prefix_opt: the --prefix argument for shadow's userdel/groupdel when staging.
prefix_opt() { if [ "$STAGING" -eq 1 ]; then printf -- '--prefix %s ' "$ROOT"; fi; }

# passwd_field DB NAME FIELD: one field of NAME's entry in $ROOT/etc/DB ('' if absent).
passwd_field() { awk -F: -v n="$2" -v f="$3" '$1 == n { print $f; exit }' "$ROOT/etc/$1" 2>/dev/null || true; }
# name_of DB ID: the name owning numeric ID in $ROOT/etc/DB ('' if none).
name_of() { awk -F: -v id="$2" '$3 == id { print $1; exit }' "$ROOT/etc/$1" 2>/dev/null || true; }
# primary_of GID: the users whose primary group is GID, space-separated.
primary_of() { awk -F: -v g="$1" '$4 == g { printf "%s ", $1 }' "$ROOT/etc/passwd" 2>/dev/null || true; }

sha() { sha256sum < "$1" | cut -d' ' -f1; }

# ---- 0. where each artefact comes from: your config when there is one, else deploy/systemd/
python_for_venv() {
    "$SRC/deploy/find-python.sh" ${PYTHON:+"$PYTHON"} \
        || die "no usable Python (fix: see the find-python line above; PYTHON=/usr/bin/python3.11 picks one)"
}

# a copy of the checkout to build from: an in-tree build would leave root-owned build/ and
# *.egg-info in the checkout, and a stale build/lib can carry deleted modules along
BUILD=""
make_build_copy() {
    need_work
    BUILD=$WORK/src
    [ -d "$BUILD" ] && return 0
    mkdir -p "$BUILD"
    tar -C "$SRC" --exclude=./.git --exclude=./.venv --exclude=./build --exclude='*.egg-info' \
        --exclude=__pycache__ --exclude=./.demo -cf - . | tar -C "$BUILD" -xf -
}

# render INST CONFIG: the artefacts for INST from CONFIG, with this checkout's code run
# from a scratch copy (nothing on the host is written before the ids are checked). The
# renderer needs only PyYAML: the interpreter's own, the venv's on a re-run, or a scratch one.
RENDERER=""
render_from() {
    local inst=$1 cfg=$2 artefact py base
    need_work
    if [ -z "$RENDERER" ]; then
        make_build_copy
        base=$(python_for_venv) || exit 1
        for py in "$base" "$ROOT$VENV/bin/python"; do
            if [ -x "$py" ] && "$py" -c 'import yaml' 2>/dev/null; then RENDERER=$py; break; fi
        done
        if [ -z "$RENDERER" ]; then
            RENDERER=$base
            say "fetching PyYAML into a scratch directory, to render $cfg"
            "$RENDERER" -m pip install --quiet --disable-pip-version-check --target "$WORK/lib" pyyaml >"$WORK/pip.log" 2>&1 \
                || { tail -n 20 "$WORK/pip.log" >&2; die "could not fetch PyYAML to render $cfg (fix: apt-get install python3-yaml)"; }
        fi
    fi
    mkdir -p "$WORK/$inst"
    for artefact in sysusers tmpfiles unit backup-service backup-timer; do
        PYTHONPATH=$BUILD${WORK:+:$WORK/lib} "$RENDERER" -m ductile.deploy "$artefact" "$cfg" "/etc/$inst" "$inst" \
            > "$WORK/$inst/$artefact" 2>"$WORK/render.err" \
            || die "cannot render $artefact from $cfg: $(head -n 1 "$WORK/render.err")"
    done
}

declare -A SOURCE   # "<inst>:<artefact>" -> the file to install
for inst in "${INSTANCES[@]}"; do
    cfg=""
    if [ "$inst" = ductile ] && [ -n "$CONFIG" ]; then
        cfg=$CONFIG
    elif [ -f "$ROOT/etc/$inst/config.yaml" ]; then
        cfg=$ROOT/etc/$inst/config.yaml
    fi
    if [ -n "$cfg" ]; then
        render_from "$inst" "$cfg"
        say "$inst: sysusers, tmpfiles, unit and backup units rendered from ${cfg#"$ROOT"} (your accounts and paths)"
        SOURCE[$inst:sysusers]=$WORK/$inst/sysusers
        SOURCE[$inst:tmpfiles]=$WORK/$inst/tmpfiles
        SOURCE[$inst:unit]=$WORK/$inst/unit
        SOURCE[$inst:backup-service]=$WORK/$inst/backup-service
        SOURCE[$inst:backup-timer]=$WORK/$inst/backup-timer
    else
        SOURCE[$inst:sysusers]=$SHIPPED/$inst.sysusers.conf
        SOURCE[$inst:tmpfiles]=$SHIPPED/$inst.tmpfiles.conf
        SOURCE[$inst:unit]=$SHIPPED/$inst.service
        SOURCE[$inst:backup-service]=$SHIPPED/$inst-backup.service
        SOURCE[$inst:backup-timer]=$SHIPPED/$inst-backup.timer
    fi
done

# ---- 1. decide, per file, what to do; nothing is written yet
declare -A RECORDED   # path (as on the final host) -> sha256 install.sh last installed there
if [ -f "$ROOT$MANIFEST_PATH" ]; then
    while read -r hash path; do
        case "$hash" in ''|'#'*) continue ;; esac
        RECORDED[$path]=$hash
    done < "$ROOT$MANIFEST_PATH"
fi

# shipped_before REL DEST: DEST equals a version of REL (a path in the checkout) that an
# earlier commit shipped. Hosts installed before the manifest existed have no record; a
# file equal to an old shipped version was never edited, so it is upgraded, not kept.
shipped_before() {
    local rel=$1 dest=$2 blob
    [ -n "$rel" ] && git -C "$SRC" rev-parse --git-dir >/dev/null 2>&1 || return 1
    blob=$(git -C "$SRC" hash-object "$dest" 2>/dev/null) || return 1
    git -C "$SRC" log --no-abbrev --format= --raw -- "$rel" 2>/dev/null | awk '{ print $4 }' | grep -qx "$blob"
}

# decide SRC DEST REL: new | same | upgrade | replace | kept-changed | kept-unknown
# (REL: the shipped counterpart of DEST in the checkout, for installs older than the manifest)
decide() {
    local src=$1 dest=$2 rel=$3 final=${2#"$ROOT"} have
    if [ ! -e "$dest" ]; then echo new; return; fi
    if cmp -s "$src" "$dest"; then echo same; return; fi
    if [ "$REPLACE" -eq 1 ]; then echo replace; return; fi
    have=$(sha "$dest")
    if [ -n "${RECORDED[$final]:-}" ]; then
        if [ "$have" = "${RECORDED[$final]}" ]; then echo upgrade; else echo kept-changed; fi
        return
    fi
    if shipped_before "$rel" "$dest"; then echo upgrade; else echo kept-unknown; fi
}

PLAN_SRC=()
PLAN_DEST=()
PLAN_MODE=()
PLAN_WHAT=()
declare -A PLANNED   # dest -> index
plan() {
    local src=$1 dest=$2 mode=$3 rel=$4
    PLANNED[$dest]=${#PLAN_DEST[@]}
    PLAN_SRC+=("$src")
    PLAN_DEST+=("$dest")
    PLAN_MODE+=("$mode")
    PLAN_WHAT+=("$(decide "$src" "$dest" "$rel")")
}
for inst in "${INSTANCES[@]}"; do
    plan "${SOURCE[$inst:sysusers]}" "$ROOT/etc/sysusers.d/$inst.conf" 0644 "deploy/systemd/$inst.sysusers.conf"
    plan "${SOURCE[$inst:tmpfiles]}" "$ROOT/etc/tmpfiles.d/$inst.conf" 0644 "deploy/systemd/$inst.tmpfiles.conf"
    plan "${SOURCE[$inst:unit]}" "$ROOT/etc/systemd/system/$inst.service" 0644 "deploy/systemd/$inst.service"
    plan "${SOURCE[$inst:backup-service]}" "$ROOT/etc/systemd/system/$inst-backup.service" 0644 \
        "deploy/systemd/$inst-backup.service"
    plan "${SOURCE[$inst:backup-timer]}" "$ROOT/etc/systemd/system/$inst-backup.timer" 0644 "deploy/systemd/$inst-backup.timer"
done
for page in "$SRC"/man/*.[15]; do
    plan "$page" "$ROOT/usr/local/share/man/man${page##*.}/$(basename "$page")" 0644 "man/$(basename "$page")"
done

# in_effect DEST: the file that will be in place at DEST after this run
in_effect() {
    local i=${PLANNED[$1]}
    case "${PLAN_WHAT[$i]}" in kept-*) echo "$1" ;; *) echo "${PLAN_SRC[$i]}" ;; esac
}

# ---- 2. every fixed uid and gid, checked before anything is written (in a dry run too)
PROBLEMS=()
COLLISION=0
declare -A WANT_USER    # user name -> "uid:gid" written in a sysusers file
declare -A WANT_GROUP   # group name -> gid written in a sysusers file
check_ids() {
    local conf=$1 shown=$2 type name id rest uid gid have have_gid holder group_of
    declare -A gid_line=()
    while read -r type name id rest; do
        if [ "$type" = g ] && [ "$id" != "-" ]; then gid_line[$id]=$name; fi
    done < "$conf"
    # groups come first in the file, users first in the report: a user is what an account is
    while read -r type name id rest; do
        [ "$type" = u ] || continue
        case "$id" in -|"") continue ;; esac
        uid=${id%%:*}
        gid=${id#*:}
        if [ "$gid" = "$id" ]; then gid=$uid; fi
        WANT_USER[$name]=$uid:$gid
        holder=$(name_of passwd "$uid")
        have=$(passwd_field passwd "$name" 3)
        have_gid=$(passwd_field passwd "$name" 4)
        if [ -n "$holder" ] && [ "$holder" != "$name" ]; then
            PROBLEMS+=("$shown: user $name needs uid $uid, which belongs to user $holder")
            COLLISION=1
        fi
        if [ -n "$have" ] && [ "$have:$have_gid" != "$uid:$gid" ]; then
            PROBLEMS+=("$shown: user $name exists as $have:$have_gid, not $uid:$gid as written (left by an earlier run, or the ids changed)")
        fi
        group_of=$(name_of group "$gid")
        if [ -z "${gid_line[$gid]:-}" ] && [ -n "$group_of" ] && [ "$group_of" != "$name" ]; then
            PROBLEMS+=("$shown: user $name would get primary group $gid, which is group $group_of")
            COLLISION=1
        fi
    done < "$conf"
    while read -r type name id rest; do
        [ "$type" = g ] || continue
        case "$id" in -|"") continue ;; esac
        WANT_GROUP[$name]=$id
        holder=$(name_of group "$id")
        have=$(passwd_field group "$name" 3)
        if [ -n "$holder" ] && [ "$holder" != "$name" ]; then
            PROBLEMS+=("$shown: group $name needs gid $id, which belongs to group $holder")
            COLLISION=1
        fi
        if [ -n "$have" ] && [ "$have" != "$id" ]; then
            PROBLEMS+=("$shown: group $name exists with gid $have, not $id as written (left by an earlier run, or the ids changed)")
        fi
    done < "$conf"
}

# removals: the exact groupdel/userdel lines for what an earlier run left. A user or group of
# ours with other ids than written is always in the way. When ids must change anyway (a
# collision), so are ours that no account directory belongs to yet: a run that stopped
# after systemd-sysusers made them, and nothing owns a file yet.
removals() {
    local name have cur home u
    declare -A rm_user=() rm_group=()
    for name in "${!WANT_USER[@]}"; do
        have=$(passwd_field passwd "$name" 3)
        [ -n "$have" ] || continue
        cur=$have:$(passwd_field passwd "$name" 4)
        home=$(passwd_field passwd "$name" 6)
        if [ "$cur" != "${WANT_USER[$name]}" ]; then
            rm_user[$name]=1
        elif [ "$COLLISION" -eq 1 ] && [ -n "$home" ] && [ ! -e "$ROOT$home" ]; then
            rm_user[$name]=1
        fi
    done
    for name in "${!WANT_GROUP[@]}"; do
        have=$(passwd_field group "$name" 3)
        [ -n "$have" ] || continue
        if [ "$have" != "${WANT_GROUP[$name]}" ]; then
            rm_group[$name]=$have
        elif [ "$COLLISION" -eq 1 ] && { [ -n "${rm_user[$name]:-}" ] || [ -z "$(passwd_field passwd "$name" 3)" ]; }; then
            rm_group[$name]=$have
        fi
    done
    # groups first: one that is the primary group of a user removed below goes with -f, so
    # the lines work whatever USERGROUPS_ENAB says (userdel may or may not take it along)
    for name in $(printf '%s\n' "${!rm_group[@]}" | sort); do
        local force=""
        for u in $(primary_of "${rm_group[$name]}"); do
            if [ -n "${rm_user[$u]:-}" ]; then force="-f "; fi
        done
        echo "    groupdel $(prefix_opt)$force$name"
    done
    for name in $(printf '%s\n' "${!rm_user[@]}" | sort); do
        echo "    userdel $(prefix_opt)$name"
    done
    # an account whose ids changed on purpose already owns files: they keep the old ids
    for name in $(printf '%s\n' "${!rm_user[@]}" | sort); do
        home=$(passwd_field passwd "$name" 6)
        if [ -n "$home" ] && [ -e "$ROOT$home" ]; then
            echo "    # after the rerun, $home and its files still belong to the old ids: chown -R ${WANT_USER[$name]} $ROOT$home"
        fi
    done
}

for inst in "${INSTANCES[@]}"; do
    check_ids "$(in_effect "$ROOT/etc/sysusers.d/$inst.conf")" "/etc/sysusers.d/$inst.conf"
done
# free_ids N: N numbers free as both uid and gid, from 61001 up: above UID_MAX (60000), so
# useradd never hands them to a person later, and below 65534 (nobody).
free_ids() {
    local n=$1 id=61001 out=""
    while [ "$n" -gt 0 ] && [ "$id" -lt 65534 ]; do
        if [ -z "$(name_of passwd "$id")" ] && [ -z "$(name_of group "$id")" ]; then out+="$id "; n=$((n - 1)); fi
        id=$((id + 1))
    done
    echo "${out% }"
}

if [ "${#PROBLEMS[@]}" -gt 0 ]; then
    for p in "${PROBLEMS[@]}"; do printf 'install.sh: error: %s\n' "$p" >&2; done
    REMOVE=$(removals)
    {
        echo "install.sh: nothing was written: the users and groups above must be fixed first."
        if [ -n "$REMOVE" ]; then
            echo "install.sh: 1. remove these users and groups (left by an earlier run, or with ids the config no longer has):"
            echo "$REMOVE"
        fi
        if [ "$COLLISION" -eq 1 ]; then
            echo "install.sh: $([ -n "$REMOVE" ] && echo 2 || echo 1). these ids are taken on this host: choose free ones for each account in a copy of the config, and install from it:"
            echo "    cp $SRC/deploy/config/ductile.yaml /root/ductile.yaml     # edit the uid/gid of each account (free here: $(free_ids "${#WANT_USER[@]}"))"
            echo "    $SRC/deploy/install.sh${ROOT:+ --root $ROOT} --config /root/ductile.yaml"
            echo "  (then, at the config step, install that file as /etc/ductile/config.yaml; see docs/deployment.md, \"When an id is taken\")"
        else
            echo "install.sh: 2. run it again: $SRC/deploy/install.sh${ROOT:+ --root $ROOT}${CONFIG:+ --config $CONFIG}"
        fi
    } >&2
    exit 1
fi

# ---- 3. write: the users, then their directories (tmpfiles resolves owners by name)
[ "$DRY_RUN" -eq 1 ] && say "dry run: nothing will be changed (ids checked: no conflict)"
[ "$STAGING" -eq 1 ] && say "staging into $ROOT"
if [ "$STAGING" -eq 1 ] && [ ! -d "$ROOT" ]; then run install -d -m 0755 "$ROOT"; fi

KEPT=()
UPGRADED=()
# place DEST: carry out the decision made for DEST
place() {
    local i=${PLANNED[$1]} dest=$1 final=${1#"$ROOT"}
    local src=${PLAN_SRC[$i]} mode=${PLAN_MODE[$i]} what=${PLAN_WHAT[$i]}
    case "$what" in
        same)
            say "unchanged: $final"
            if [ -e "$dest$NEW_SUFFIX" ]; then run rm -f "$dest$NEW_SUFFIX"; fi
            ;;
        new|upgrade|replace)
            CHANGES=1
            if [ "$what" = upgrade ]; then
                UPGRADED+=("$final")
                say "upgrade: $final (not changed since it was installed; this release changes it)"
            elif [ "$what" = replace ]; then
                say "replace: $final (--replace: your changes are overwritten)"
            fi
            run install -D -m "$mode" -o root -g root "$src" "$dest"
            if [ -e "$dest$NEW_SUFFIX" ]; then run rm -f "$dest$NEW_SUFFIX"; fi
            ;;
        kept-*)
            KEPT+=("$final")
            if [ "$what" = kept-changed ]; then
                say "kept: $final: changed since install.sh installed it, so it is yours now; the new version is $final$NEW_SUFFIX"
            else
                say "kept: $final: differs from the new version and install.sh has no record of installing it; the new version is $final$NEW_SUFFIX"
            fi
            say "      review: diff -u $final $final$NEW_SUFFIX ; take it: mv $final$NEW_SUFFIX $final ; or rerun with --replace"
            run install -m 0644 -o root -g root "$src" "$dest$NEW_SUFFIX"
            ;;
    esac
}

# verify_ids CONF: after systemd-sysusers, every fixed id is what the file says (a second
# look: the check above ran before; this one catches a race with another useradd).
verify_ids() {
    local conf=$1 shown=${1#"$ROOT"} type name id _ have
    while read -r type name id _; do
        case "$type:$id" in u:-|g:-|u:|g:) continue ;; u:*|g:*) ;; *) continue ;; esac
        if [ "$type" = g ]; then have=$(passwd_field group "$name" 3); else have=$(passwd_field passwd "$name" 3); id=${id%%:*}; fi
        [ "$have" = "$id" ] || die "$shown: $([ "$type" = g ] && echo group || echo user) $name has id ${have:-none} after systemd-sysusers, not $id as written (fix: run deploy/install.sh again and follow its id check)"
    done < "$conf"
}

for inst in "${INSTANCES[@]}"; do
    place "$ROOT/etc/sysusers.d/$inst.conf"
    place "$ROOT/etc/tmpfiles.d/$inst.conf"
done
for inst in "${INSTANCES[@]}"; do
    # shellcheck disable=SC2046  # tool_root prints zero or one word
    run systemd-sysusers $(tool_root) "$inst.conf"
    if [ "$DRY_RUN" -eq 0 ]; then verify_ids "$ROOT/etc/sysusers.d/$inst.conf"; fi
done
for inst in "${INSTANCES[@]}"; do
    # shellcheck disable=SC2046
    run systemd-tmpfiles --create $(tool_root) "$inst.conf"
done

# ---- 4. the package, in a venv every account can execute (plugins and the kill helper
#    run the same interpreter after the drop), never under a 0700 home.
# relocate STAGED: the venv was built at $ROOT$VENV; make it correct at $VENV. Scripts'
# #! lines, activate files and pyvenv.cfg name the build path, and bytecode records the
# source paths it was compiled from.
relocate() {
    local staged=$1 fresh=$2
    need_work
    "$staged/bin/python" - "$staged" "$VENV" <<'PY'
import os, sys
staged, final = sys.argv[1].encode(), sys.argv[2].encode()
targets = [os.path.join(sys.argv[1], "pyvenv.cfg")]
bindir = os.path.join(sys.argv[1], "bin")
targets += [os.path.join(bindir, n) for n in os.listdir(bindir)]
for path in targets:
    if os.path.islink(path) or not os.path.isfile(path):
        continue
    with open(path, "rb") as fh:
        data = fh.read()
    if b"\0" in data[:1024] or staged not in data:
        continue  # a binary, or nothing to rewrite
    mode = os.stat(path).st_mode
    with open(path + ".tmp", "wb") as fh:
        fh.write(data.replace(staged, final))
    os.chmod(path + ".tmp", mode & 0o7777)
    os.replace(path + ".tmp", path)
PY
    # a fresh venv's pip was compiled by ensurepip with the build path: recompile all of it
    # once; later runs compile only what pip --no-compile left without bytecode
    "$staged/bin/python" -m compileall -q $([ "$fresh" -eq 1 ] && echo -f) -s "$ROOT" -p / "$staged/lib" >/dev/null
    if grep -rlF --exclude=direct_url.json "$ROOT" "$staged" >"$WORK/still" 2>/dev/null; then
        die "the staged venv still names $ROOT in $(head -n 1 "$WORK/still") (fix: report it; do not copy this tree)"
    fi
}

if [ "$VENV_WANTED" -eq 1 ]; then
    PY=$(python_for_venv)
    run install -d -m 0755 -o root -g root "$ROOT/opt/ductile"
    FRESH_VENV=0
    if [ -x "$ROOT$VENV/bin/python" ]; then
        say "venv exists: $VENV (upgrading the package in it)"
    else
        run "$PY" -m venv "$ROOT$VENV"
        FRESH_VENV=1
    fi
    if [ "$DRY_RUN" -eq 1 ]; then
        say "would run: $ROOT$VENV/bin/python -m pip install --upgrade <copy of $SRC>"
    else
        make_build_copy
        # staged: compiled once below, with the final paths recorded in the bytecode
        run "$ROOT$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
            $([ "$STAGING" -eq 1 ] && echo --no-compile) "$BUILD"
        if [ "$STAGING" -eq 1 ]; then
            relocate "$ROOT$VENV" "$FRESH_VENV"
            say "relocated: $ROOT$VENV -> $VENV (scripts, pyvenv.cfg and bytecode name the final path)"
        fi
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

# ---- 5. the units (the gateway's; the daily backup's service and timer, installed but
#    not enabled: the summary says how), and the manual pages their Documentation= lines point at
for inst in "${INSTANCES[@]}"; do
    place "$ROOT/etc/systemd/system/$inst.service"
    place "$ROOT/etc/systemd/system/$inst-backup.service"
    place "$ROOT/etc/systemd/system/$inst-backup.timer"
done
for page in "$SRC"/man/*.[15]; do
    place "$ROOT/usr/local/share/man/man${page##*.}/$(basename "$page")"
done

# ---- 6. the manifest: what install.sh installed, so the next run can tell your edits apart
if [ "$DRY_RUN" -eq 0 ]; then
    for i in "${!PLAN_DEST[@]}"; do
        case "${PLAN_WHAT[$i]}" in
            kept-*) ;;
            *) RECORDED[${PLAN_DEST[$i]#"$ROOT"}]=$(sha "${PLAN_SRC[$i]}") ;;
        esac
    done
    install -d -m 0755 -o root -g root "$ROOT$(dirname "$MANIFEST_PATH")"
    {
        echo "# sha256 and path of every file deploy/install.sh installed; it upgrades a file that"
        echo "# still has this hash and keeps one that does not. Written by install.sh; do not edit."
        for path in "${!RECORDED[@]}"; do printf '%s  %s\n' "${RECORDED[$path]}" "$path"; done | sort -k2
    } > "$ROOT$MANIFEST_PATH.tmp"
    chmod 0644 "$ROOT$MANIFEST_PATH.tmp"
    mv -f "$ROOT$MANIFEST_PATH.tmp" "$ROOT$MANIFEST_PATH"
    say "recorded: $MANIFEST_PATH"
fi

if [ "$STAGING" -eq 1 ]; then
    say "skipped: systemctl daemon-reload (staging into $ROOT)"
elif [ ! -d /run/systemd/system ]; then
    say "skipped: systemctl daemon-reload (systemd is not PID 1 here: no /run/systemd/system)"
elif [ "$CHANGES" -eq 1 ] || [ "$DRY_RUN" -eq 1 ]; then
    run systemctl daemon-reload
fi

# ---- 7. summary: what each directory should be and what it is
# describe PATH: "mode owner:group (uid:gid)" as it is now, names from $ROOT's passwd/group.
describe() {
    local p=$1 mode uid gid user group
    [ -e "$p" ] || { echo "MISSING"; return 0; }
    read -r mode uid gid < <(stat -c '%a %u %g' "$p")
    user=$(name_of passwd "$uid")
    group=$(name_of group "$gid")
    printf '%04o %s:%s (%s:%s)' "0$mode" "${user:-$uid}" "${group:-$gid}" "$uid" "$gid"
}
echo
say "layout (want -> have):"
for inst in "${INSTANCES[@]}"; do
    conf=$(in_effect "$ROOT/etc/tmpfiles.d/$inst.conf")
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
    printf '  %-44s %s\n' "/etc/systemd/system/$inst-backup.{service,timer}" "the daily backup (enable the timer)"
done

# ---- 8. what to do next: a first install, or an upgrade (which never touches your files)
echo
if [ -e "$ROOT/etc/ductile/config.yaml" ]; then
    cat <<EOF
Upgrade: your /etc/ductile/config.yaml, vault, key and locks were not touched.
EOF
    if [ "${#UPGRADED[@]}" -gt 0 ]; then printf '  upgraded: %s\n' "${UPGRADED[@]}"; fi
    if [ "${#KEPT[@]}" -gt 0 ]; then printf '  kept (yours; the new version is beside it as FILE%s): %s\n' "$NEW_SUFFIX" "${KEPT[@]}"; fi
    cat <<EOF
Next (as root; docs/deployment.md, "Upgrading"):
  1. check:    ductile doctor --as-unit --config /etc/ductile
  2. restart:  systemctl daemon-reload && systemctl restart ductile.service   (it drains running jobs)
  3. prove:    ductile account verify --as-unit --config /etc/ductile
  4. backups:  systemctl enable --now ductile-backup.timer   (if not yet: a daily archive in /var/backups/ductile)
EOF
else
    draft=${CONFIG:-$SRC/deploy/config/ductile.yaml}
    cat <<EOF
Next steps: the first-time install in docs/deployment.md, from step 2 (as root; commands
that write the gateway's files run as the ductile user):
  2. config:  test -e /etc/ductile/config.yaml || install -m 0600 -o ductile -g ductile $draft /etc/ductile/config.yaml
  3. vault:   runuser -u ductile -- ductile vault init --config /etc/ductile
  4. token, 5. a plugin, 6. lock: see the runbook
  7. verify:  ductile doctor --as-unit --config /etc/ductile && ductile account verify --as-unit --config /etc/ductile
  8. start:   systemctl enable --now ductile.service
  9. backups: systemctl enable --now ductile-backup.timer   (a daily archive in /var/backups/ductile)
EOF
fi
if [ "$WITH_ADMIN" -eq 1 ]; then cat <<EOF
  Admin instance: the same with ductile-admin and /etc/ductile-admin (no accounts, so no
  account verify); its config starts from $SRC/deploy/config/ductile-admin.yaml.
EOF
fi
exit 0
