#!/bin/sh
# Print the first Python >= 3.11 (never CPython 3.12.0) whose path every
# account can reach: plugins dropped to unprivileged uids execute the same
# interpreter as the gateway, so an interpreter under a 0700 home (pyenv under
# /root) would fail every confined spawn with EACCES.
# Usage: find-python.sh [candidate...]   (exit 1 with a reason if none fits)
set -u

world_reachable() {
    # every directory on the way must be searchable by "other"; the file executable by "other"
    p=$(readlink -f "$1") || return 1
    [ -x "$p" ] || return 1
    case "$(stat -c %A "$p")" in ?????????x) ;; *) return 1 ;; esac
    d=$(dirname "$p")
    while [ "$d" != "/" ]; do
        case "$(stat -c %A "$d")" in ?????????[xt]) ;; *) return 1 ;; esac
        d=$(dirname "$d")
    done
    return 0
}

good_version() {
    "$1" -c 'import sys; v = sys.version_info[:3]; sys.exit(0 if v >= (3, 11) and v != (3, 12, 0) else 1)' 2>/dev/null
}

if [ $# -eq 0 ]; then
    set -- /usr/bin/python3.11 /usr/bin/python3.13 /usr/bin/python3.12 /usr/bin/python3 \
           /usr/local/bin/python3.11 /usr/local/bin/python3.13 /usr/local/bin/python3.12 /usr/local/bin/python3
fi
rejected=""
for cand in "$@"; do
    [ -e "$cand" ] || continue
    if ! good_version "$cand"; then rejected="$rejected $cand(version)"; continue; fi
    if ! world_reachable "$cand"; then rejected="$rejected $cand(not world-reachable)"; continue; fi
    echo "$cand"
    exit 0
done
echo "find-python: no usable Python: need >= 3.11 (not 3.12.0) at a path every account can execute; rejected:${rejected:- none found}. Fix: apt-get install python3.11 python3.11-venv, or pass PYTHON=/path/to/python3" >&2
exit 1
