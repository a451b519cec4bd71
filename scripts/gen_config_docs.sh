#!/usr/bin/env bash
# Regenerates the configuration reference in docs/configuration.md from the code (dsrl_train --print-schema).
# A test (ConfigDocsTest) fails when the two differ. Usage: scripts/gen_config_docs.sh [build-dir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/build}/bin/dsrl_train
doc=$root/docs/configuration.md
table=$("$bin" --print-schema)
python3 - "$doc" "$table" <<'PY'
import sys
path, table = sys.argv[1], sys.argv[2]
text = open(path).read()
begin, end = "<!-- schema:begin -->\n", "<!-- schema:end -->"
b, e = text.index(begin), text.index(end)
open(path, "w").write(text[: b + len(begin)] + table + "\n" + text[e:])
PY
echo "updated $doc"
