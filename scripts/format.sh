#!/usr/bin/env bash
# Formats the C++/CUDA sources with .clang-format, or checks them.
#   bash scripts/format.sh           rewrite every unformatted file in place
#   bash scripts/format.sh --check   list unformatted files and exit 1 if there is one (scripts/test.sh runs this)
# Uses clang-format 14 (Debian 12's, installed by scripts/setup.sh): other major versions format some constructs
# differently, so with another version the check is skipped with a message rather than failing on their taste.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
mode=${1:-fix}

tool=""
for candidate in clang-format-14 clang-format; do
    if command -v "$candidate" >/dev/null; then
        major=$("$candidate" --version | sed -E 's/.*version ([0-9]+).*/\1/')
        if [ "$major" = 14 ]; then tool=$candidate; break; fi
    fi
done
if [ -z "$tool" ]; then
    echo "[format] skipped: clang-format 14 not found (bash scripts/setup.sh installs it)" >&2
    exit 0
fi

if [ -d .git ] || git rev-parse --git-dir >/dev/null 2>&1; then
    mapfile -t files < <(git ls-files --cached --others --exclude-standard -- '*.cpp' '*.h' '*.cu' '*.cuh')
else
    mapfile -t files < <(find . -path ./build -prune -o -path './.*' -prune -o \
        \( -name '*.cpp' -o -name '*.h' -o -name '*.cu' -o -name '*.cuh' \) -print | sed 's|^\./||' | sort)
fi

if [ "$mode" = --check ]; then
    bad=()
    for f in "${files[@]}"; do
        [ -f "$f" ] || continue
        if ! "$tool" --dry-run --Werror "$f" >/dev/null 2>&1; then bad+=("$f"); fi
    done
    if [ ${#bad[@]} -gt 0 ]; then
        echo "[format] ${#bad[@]} file(s) do not match .clang-format (fix: bash scripts/format.sh):" >&2
        printf '  %s\n' "${bad[@]}" >&2
        exit 1
    fi
    echo "[format] ${#files[@]} files match .clang-format"
    exit 0
fi
existing=()
for f in "${files[@]}"; do [ -f "$f" ] && existing+=("$f"); done
"$tool" -i "${existing[@]}"
echo "[format] formatted ${#existing[@]} files with $tool"
