# Orchestra set-up: `source setup.sh` creates .venv when missing, installs Orchestra with its test
# extra, and activates it. Running it again is fast: it reinstalls only when setup.py changed.
_orchestra_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
_orchestra_venv="$_orchestra_root/.venv"
if [ ! -x "$_orchestra_venv/bin/python" ]; then
    python3 -m venv "$_orchestra_venv" || { echo "setup.sh: python3 -m venv failed; install python3-venv" >&2; return 1 2>/dev/null || exit 1; }
fi
_orchestra_stamp="$_orchestra_venv/.orchestra-installed"
if [ ! -f "$_orchestra_stamp" ] || [ "$_orchestra_root/setup.py" -nt "$_orchestra_stamp" ]; then
    # -qq: pip's errors only (a site's pip configuration can add a warning per package).
    echo "setup.sh: installing Orchestra and its test tools into $_orchestra_venv ..."
    "$_orchestra_venv/bin/python" -m pip install -qq --upgrade pip &&
    "$_orchestra_venv/bin/python" -m pip install -qq -e "$_orchestra_root[test]" &&
    touch "$_orchestra_stamp" || { echo "setup.sh: installing Orchestra failed (see pip's message above)" >&2; return 1 2>/dev/null || exit 1; }
fi
# The editable install leaves Orchestra's own modules uncompiled, and where PYTHONDONTWRITEBYTECODE
# is set nothing ever writes their bytecode: every CLI call, scheduler and job wrapper would compile
# them again (~0.3 s a process here). Only changed files are compiled; a read-only checkout is fine.
"$_orchestra_venv/bin/python" -m compileall -q -j 0 "$_orchestra_root/orchestra" >/dev/null 2>&1 || true
# shellcheck disable=SC1091
. "$_orchestra_venv/bin/activate"
case ":$PATH:" in *":$_orchestra_root/scripts:"*) ;; *) export PATH="$_orchestra_root/scripts:$PATH" ;; esac
unset _orchestra_root _orchestra_venv _orchestra_stamp
