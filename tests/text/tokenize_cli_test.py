"""`dsrl_tool tokenize` against Python `tokenizers` (the oracle files of tokenizer_oracle.py): encode one JSON
string per line, decode one JSON array per line (special tokens kept). Usage: tokenize_cli_test.py DSRL_TOOL
ORACLE_DIR"""
import json
import os
import subprocess
import sys


def run(tool, args, lines):
    p = subprocess.run([tool, "tokenize", *args], input="".join(l + "\n" for l in lines), capture_output=True,
                       text=True, encoding="utf-8")
    if p.returncode != 0:
        sys.exit(f"dsrl_tool tokenize {' '.join(args)} failed ({p.returncode}): {p.stderr}")
    return p.stdout.split("\n")[:-1]


def main(tool, oracle_dir):
    names = json.load(open(os.path.join(oracle_dir, "tokenizer.json")))
    failures = 0
    for name in names:
        d = os.path.join(oracle_dir, "tokenizers", name)
        cases = json.load(open(d + ".json"))
        texts, ids = cases["texts"][:200], cases["ids"][:200]
        got = run(tool, ["--tokenizer", d], [json.dumps(t) for t in texts])
        for i, (line, want) in enumerate(zip(got, ids)):
            if json.loads(line) != want:
                failures += 1
                print(f"{name}: text {i} {texts[i][:40]!r}: got {line[:80]}, want {want[:10]}")
        if len(got) != len(texts):
            failures += 1
            print(f"{name}: {len(got)} output lines for {len(texts)} inputs")
        decoded = run(tool, ["--tokenizer", d, "--decode"], [json.dumps(i) for i in ids])
        for i, line in enumerate(decoded):
            if json.loads(line) != cases["decoded"][i]:
                failures += 1
                print(f"{name}: decode {i}: got {line[:80]}, want {json.dumps(cases['decoded'][i])[:80]}")
        print(f"{name}: {len(texts)} encodes and decodes checked")
    # Errors name the problem and exit non-zero.
    bad = subprocess.run([tool, "tokenize", "--tokenizer", os.path.join(oracle_dir, "tokenizers", names[0])],
                         input="[1, 2]\n", capture_output=True, text=True)
    if bad.returncode == 0 or "expected a JSON string" not in bad.stderr:
        failures += 1
        print(f"a JSON array without --decode must be an error naming it; got rc {bad.returncode}: {bad.stderr}")
    missing = subprocess.run([tool, "tokenize", "--tokenizer", "/nonexistent"], input="", capture_output=True,
                             text=True)
    if missing.returncode == 0 or "/nonexistent/tokenizer.json" not in missing.stderr:
        failures += 1
        print(f"a missing tokenizer must be an error naming the file; got: {missing.stderr}")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
