"""The library DAG drawn in docs/architecture.md (between <!-- dag:begin --> and <!-- dag:end -->) must equal the
CMake targets' direct dsrl dependencies (written by cmake/DsrlHelpers.cmake to <build>/dsrl_library_dag.txt),
and the layering rules hold on the transitive closure: core depends on nothing, rewards and data sit below the
model (issue 18). Usage: architecture_dag_test.py docs/architecture.md build/dsrl_library_dag.txt"""
import re
import sys

doc_path, cmake_path = sys.argv[1], sys.argv[2]
text = open(doc_path).read()
m = re.search(r"<!-- dag:begin -->(.*?)<!-- dag:end -->", text, re.S)
if not m:
    sys.exit(f"FAIL: {doc_path} has no <!-- dag:begin --> ... <!-- dag:end --> block")
doc = {}
for line in m.group(1).splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) < 2 or not cells[0].startswith("`"):
        continue
    doc[cells[0].strip("`")] = set(re.findall(r"`([a-z_]+)`", cells[1]))

cmake = {}
for line in open(cmake_path):
    if ":" not in line:
        continue
    name, deps = line.strip().split(":", 1)
    cmake[name] = {d for d in deps.split(",") if d}

bad = []
for lib in sorted(set(doc) | set(cmake)):
    if lib not in cmake:
        bad.append(f"{lib}: in {doc_path} but not a CMake library")
    elif lib not in doc:
        bad.append(f"{lib}: a CMake library missing from {doc_path} (deps {sorted(cmake[lib])})")
    elif doc[lib] != cmake[lib]:
        bad.append(f"{lib}: {doc_path} says {sorted(doc[lib])}, CMake links {sorted(cmake[lib])}")


def closure(lib, seen=()):
    if lib in seen:
        bad.append(f"cycle: {' -> '.join(seen + (lib,))}")
        return set()
    out = set()
    for d in cmake.get(lib, ()):
        out |= {d} | closure(d, seen + (lib,))
    return out


rules = {"core": set(), "text": {"core"}, "data": {"core", "text"}, "rewards": {"core"}}
for lib, allowed in rules.items():
    extra = closure(lib) - allowed
    if extra:
        bad.append(f"{lib} may depend only on {sorted(allowed) or 'nothing'}, but reaches {sorted(extra)}")
for b in bad:
    print("FAIL:", b)
if bad:
    sys.exit(1)
print(f"ok: {len(cmake)} libraries, the documented DAG equals the CMake dependencies; layering rules hold")
