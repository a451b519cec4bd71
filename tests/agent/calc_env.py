#!/usr/bin/env python3
"""A subprocess environment for the tests (agent/subprocess.h protocol: one JSON request per line on stdin, one
JSON answer per line on stdout). A calculator tool; reset's params choose a fault for the step call:
  {"fault": "crash" | "hang" | "garbage" | "error" | "exit_quietly" | "none"}
"""
import json
import sys
import time

params = {}
for line in sys.stdin:
    req = json.loads(line)
    op = req["op"]
    if op == "reset":
        params = req.get("params", {})
        task = req["task"]
        print("calc_env: reset", task, file=sys.stderr, flush=True)
        answer = {"messages": [{"role": "user", "content": task["question"]}],
                  "tools": [{"type": "function", "function": {"name": "calc", "parameters": {"type": "object"}}}]}
    elif op == "step":
        fault = params.get("fault", "none")
        if fault == "crash":
            print("calc_env: about to crash", file=sys.stderr, flush=True)
            sys.exit(3)
        if fault == "hang":
            time.sleep(60)
        if fault == "garbage":
            print("this is not json", flush=True)
            continue
        if fault == "error":
            print(json.dumps({"error": "the tool is broken"}), flush=True)
            continue
        if fault == "exit_quietly":
            sys.exit(0)
        results = []
        for call in req["tool_calls"]:
            expr = json.loads(call["arguments"])["expr"]
            results.append({"tool_call_id": call["id"], "content": str(eval(expr, {"__builtins__": {}}))})
        answer = {"results": results, "done": False}
    elif op == "verify":
        last = req["trajectory"]["messages"][-1]["content"]
        answer = {"reward": 1.0 if "5" in last else 0.0, "details": {"final": last}}
    else:
        answer = {"error": f"unknown op {op}"}
    print(json.dumps(answer), flush=True)
