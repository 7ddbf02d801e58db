#!/usr/bin/env bash
# Type-checks jrelu6 as its users' tools see it, with basedpyright and mypy:
#   1. the package and a user's file that uses every public module correctly
#      (tests/typecheck/user_code.py): no error from either checker;
#   2. a file of mistakes (tests/typecheck/bad_keywords.py): each checker must report
#      an error on exactly the lines marked "# error" (a misspelled keyword, a
#      positional setting, a wrong type, ...).
# Needs basedpyright and mypy on PATH (pip install basedpyright mypy); exits 2 without.
#   bash tools/typecheck.sh
set -euo pipefail
cd "$(dirname "$0")/.."
for tool in basedpyright mypy; do
    command -v "$tool" >/dev/null || { echo "typecheck.sh: $tool is not installed" >&2; exit 2; }
done
python="$(command -v python3 || command -v python)"
good=(jrelu6 tests/typecheck/user_code.py)
bad=tests/typecheck/bad_keywords.py
cache="${TMPDIR:-/tmp}/jrelu6-mypy-cache"

# basedpyright's default ("recommended") rules; its warnings, mostly about the Any in jax's
# and flax's own signatures (jnp.ones, Module.apply), are left out and do not fail.
pyright() { basedpyright --level error --pythonpath "$python" "$@"; }
mypy_() { mypy --python-executable "$python" --cache-dir "$cache" "$@"; }

status=0
echo "== basedpyright ${good[*]}"
pyright "${good[@]}" || status=1
echo "== mypy ${good[*]}"
mypy_ "${good[@]}" || status=1

# The lines of $bad that hold an error (expected), and those each checker flags (found).
expected="$(grep -n "# error$" "$bad" | cut -d: -f1 | sort -n | tr '\n' ' ')"
check_bad() {  # name, then the checker's output on $bad
    local found
    # basedpyright: "FILE:LINE:COL - error: ...", mypy: "FILE:LINE: error: ...".
    found="$( (grep -oE "$bad:[0-9]+(:[0-9]+ -|:) error" <<<"$2" || true) \
        | cut -d: -f2 | sort -nu | tr '\n' ' ')"
    if [[ "$found" == "$expected" ]]; then
        echo "== $1 $bad: an error on each of the $(wc -w <<<"$expected") marked lines, none elsewhere"
    else
        echo "== $1 $bad: FAILED: errors expected on lines [$expected], found on [$found]" >&2
        status=1
    fi
}
check_bad basedpyright "$(pyright "$bad" || true)"
check_bad mypy "$(mypy_ "$bad" || true)"
exit "$status"
