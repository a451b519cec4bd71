#!/usr/bin/env bash
# Runs dsrl_dist_fail_probe under mpirun -np 2 and checks that the job fails fast with the expected line.
#   fail_probe_test.sh <mpirun> <probe> <mode> <max seconds> <expected substring>
set -u
mpirun="$1"; probe="$2"; mode="$3"; max_s="$4"; expected="$5"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
start_ms=$(( $(date +%s%N) / 1000000 ))
# The outer timeout only guards CTest against a hang; the point is that the job ends by itself.
timeout 60 "$mpirun" --oversubscribe -np 2 "$probe" "$mode" >"$log" 2>&1
rc=$?
elapsed_ms=$(( $(date +%s%N) / 1000000 - start_ms ))
cat "$log"
echo "--- mode=$mode exit code=$rc elapsed=${elapsed_ms} ms"
if [ "$rc" -eq 0 ]; then echo "FAIL: the job exited 0"; exit 1; fi
if [ "$rc" -eq 124 ]; then echo "FAIL: the job hung (killed by the 60 s guard)"; exit 1; fi
if [ "$elapsed_ms" -gt $(( max_s * 1000 )) ]; then echo "FAIL: took ${elapsed_ms} ms, more than ${max_s} s"; exit 1; fi
if ! grep -qF -- "$expected" "$log"; then echo "FAIL: output lacks: $expected"; exit 1; fi
echo "PASS"
