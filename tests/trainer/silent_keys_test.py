"""No silent keys (issue 25 item 4): every key of the job schema must be read by some code.

  silent_keys_test.py DSRL_TRAIN SOURCE_ROOT

Walks the schema (`dsrl_train --print-schema`: every key path) and the binders that define it (each
`b.field/choice/section/list("<key>", c.<member> ...)` in the sources): for each key the C++ member it binds, then
searches every source file outside the binders for a read of that member — `.<member>` or `-><member>` not
followed by an assignment or a designated initializer (`.x = ...` writes, it does not read). A key whose member is
never read is a setting a user can change to no effect: the test fails and names it. Keys read only through a
whole-struct copy (the model's architecture fields, passed to config.json) are found by the struct's own
consumers' member reads.
"""

import os
import re
import subprocess
import sys

BIND = re.compile(r'b\.(field|choice|section|list)\(\s*"([A-Za-z0-9_]+)"\s*,\s*c\.([A-Za-z0-9_.]+)')
SOURCE_EXT = (".cpp", ".h", ".cu", ".cuh")
SKIP_DIRS = {"build", ".git", ".venv", "tests", "third_party", ".device-kit", ".device-deps"}


def schema_keys(binary):
    out = subprocess.run([binary, "--print-schema"], capture_output=True, text=True, check=True).stdout
    keys = []
    for line in out.splitlines():
        m = re.match(r"\|\s*\**`([^`]+)`", line)
        if m:
            keys.append(m.group(1))
    return keys


def sources(root):
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith("build-")]
        for f in files:
            if f.endswith(SOURCE_EXT):
                yield os.path.join(d, f)


def main():
    binary, root = sys.argv[1], sys.argv[2]
    keys = schema_keys(binary)
    texts = {p: open(p, encoding="utf-8", errors="replace").read() for p in sources(root)}
    # leaf key name -> member names it binds (a leaf like "lr" is bound in several sections)
    bound = {}
    for text in texts.values():
        for m in BIND.finditer(text):
            bound.setdefault(m.group(2), set()).add(m.group(3).split(".")[-1])
    # Every source with its binder lines removed (a binder's c.<member> is not a read).
    bodies = "\n".join(
        "\n".join(l for l in t.splitlines() if not BIND.search(l) and "b.field(" not in l and "b.choice(" not in l)
        for t in texts.values())
    silent, unmapped = [], []
    for key in keys:
        leaf = re.sub(r"\[\d*\]", "", key.split(".")[-1])
        members = bound.get(leaf)
        if not members:
            unmapped.append(key)
            continue
        read = any(re.search(r"(\.|->)" + re.escape(m) + r"\b(?!\s*=[^=])", bodies) for m in members)
        if not read:
            silent.append(f"{key} (member {', '.join(sorted(members))})")
    print(f"{len(keys)} schema keys, {len(keys) - len(unmapped)} mapped to their members")
    if unmapped:
        print("keys whose binder was not found (the test cannot check them):", ", ".join(unmapped))
    if silent:
        print("FAIL: keys that no code reads (changing them does nothing):")
        for s in silent:
            print("  " + s)
        return 1
    if len(unmapped) > len(keys) // 10:
        print("FAIL: too many keys without a binder: the binder pattern no longer matches the sources")
        return 1
    print("PASS: every key is read")
    return 0


if __name__ == "__main__":
    sys.exit(main())
