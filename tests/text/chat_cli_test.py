"""`dsrl_tool chat-render` / `chat-parse` on DeepSeek's official fixture, with Python `tokenizers` and the real
DeepSeek-V3 tokenizer.json as the oracle for --ids. Usage: chat_cli_test.py DSRL_TOOL ORACLE_DIR SOURCE_DIR"""
import json
import os
import subprocess
import sys

from tokenizers import Tokenizer


def tool(exe, args, stdin=""):
    return subprocess.run([exe, *args], input=stdin.encode(), capture_output=True)


def main(exe, oracle_dir, source_dir):
    tok_dir = os.path.join(oracle_dir, "tokenizers", "deepseek_v3")
    fixture = os.path.join(source_dir, "tests", "text", "dsv32")
    golden = open(os.path.join(fixture, "test_output.txt"), encoding="utf-8").read()[:-1]
    base = ["--tokenizer", tok_dir, "--format", "deepseek_v32", "--input", os.path.join(fixture, "test_input.json")]
    failures = []
    r = tool(exe, ["chat-render", *base])
    if r.returncode != 0 or r.stdout.decode() != golden:
        failures.append(f"chat-render differs from test_output.txt (rc {r.returncode}): {r.stderr.decode()[:300]}")
    r = tool(exe, ["chat-render", *base, "--ids"])
    want = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json")).encode(golden, add_special_tokens=False).ids
    if r.returncode != 0 or json.loads(r.stdout) != want:
        failures.append(f"chat-render --ids differs from tokenizers' ids of the golden text: {r.stderr.decode()[:300]}")
    r = tool(exe, ["chat-render", *base, "--no-thinking"])
    chat = r.stdout.decode()
    reasoning = [m["reasoning_content"] for m in json.load(open(base[-1]))["messages"] if "reasoning_content" in m]
    if r.returncode != 0 or "<think>" in chat.split("</functions>")[-1] or any(x in chat for x in reasoning):
        failures.append(f"chat-render --no-thinking: {chat[-200:]!r}")
    completion = ('Need the tool.</think>\n\n<｜DSML｜function_calls>\n<｜DSML｜invoke name="get_weather">\n'
                  '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n'
                  '<｜DSML｜parameter name="days" string="false">2</｜DSML｜parameter>\n</｜DSML｜invoke>\n'
                  '</｜DSML｜function_calls><｜end▁of▁sentence｜>')
    for extra in ([], ["--strict"]):
        r = tool(exe, ["chat-parse", "--tokenizer", tok_dir, "--format", "deepseek_v32", *extra], completion)
        got = json.loads(r.stdout) if r.returncode == 0 else None
        want = {"reasoning_content": "Need the tool.", "content": "",
                "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}]}
        if got != want:
            failures.append(f"chat-parse {extra}: got {got}, stderr {r.stderr.decode()[:300]}")
    r = tool(exe, ["chat-render", "--tokenizer", tok_dir, "--format", "chatml", "--input", base[-1]])
    if r.returncode == 0 or b"chatml" not in r.stderr:
        failures.append("an unknown --format must be an error naming it")
    r = tool(exe, ["chat-parse", "--tokenizer", tok_dir, "--format", "deepseek_v32", "--thinking", "--strict"],
             "no think close")
    if r.returncode == 0 or b"</think>" not in r.stderr:
        failures.append("--strict on a completion without </think> must fail naming it")
    for f in failures:
        print("FAIL:", f)
    print(f"{6 - len(failures)} of 6 checks passed" if not failures else f"{len(failures)} failure(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main(*sys.argv[1:4])
