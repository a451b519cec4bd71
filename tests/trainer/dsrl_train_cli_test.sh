#!/usr/bin/env bash
# dsrl_train on bad input: each case prints one clear line naming the problem and exits non-zero, with no
# crash (exit codes >= 128 are signals); under mpirun a config error is printed once, by rank 0, and a process
# reports its real rank. Usage: dsrl_train_cli_test.sh path/to/dsrl_train [MPIEXEC]
set -u
bin=$1
mpiexec=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0

expect_error() {  # name, expected substring, args...
    local name=$1 want=$2
    shift 2
    local out rc
    out=$("$bin" "$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
        echo "FAIL $name: exit code $rc (want 1..127)"; echo "$out"; fail=1; return
    fi
    if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ]; then
        echo "FAIL $name: expected exactly one line, got:"; echo "$out"; fail=1; return
    fi
    if ! grep -qF -- "$want" <<<"$out"; then
        echo "FAIL $name: output lacks '$want':"; echo "$out"; fail=1; return
    fi
    echo "ok   $name: $out"
}

printf 'model:\n  hidden_size: 64\n  hiden_size: 3\n' >"$tmp/unknown.yaml"
printf 'grpo:\n  eps_low: "a lot"\n' >"$tmp/type.yaml"
printf 'model: {hidden_size: 3\n' >"$tmp/syntax.yaml"

expect_error unknown-key "unknown key 'model.hiden_size'; did you mean 'model.hidden_size'?" --config "$tmp/unknown.yaml"
expect_error wrong-type "grpo.eps_low: expected a finite number, got 'a lot'" --config "$tmp/type.yaml"
expect_error missing-file "config file '$tmp/nope.yaml' cannot be read" --config "$tmp/nope.yaml"
expect_error syntax "YAML syntax error" --config "$tmp/syntax.yaml"
expect_error bad-set "--set grpo.beta=1: unknown key 'grpo.beta'; 'beta' belongs to 'domains[].beta'" --set grpo.beta=1
expect_error bad-flag "unknown argument '--confg'" --confg x
# Start-up checks beyond the YAML: plugins, reward modules and their params, prompt data.
printf 'rewards: {plugins: [%s/nope.so]}\n' "$tmp" >"$tmp/plugin.yaml"
expect_error bad-plugin "reward plugin $tmp/nope.so: no such file" --config "$tmp/plugin.yaml"
expect_error bad-module "unknown reward module 'math_anwser' (did you mean 'math_answer'?)" \
    --set 'domains[0].rewards[0].module=math_anwser'
expect_error bad-param "reward module 'length_penalty': unknown param(s) targt" \
    --set 'domains[1].rewards=[{module: length_penalty, params: {targt: "3"}}]'
printf '{"prompt": "a"}\nnot json\n' >"$tmp/data.jsonl"
expect_error bad-data "$tmp/data.jsonl:2:" --set "domains[0].data=$tmp/data.jsonl"

# The good paths: --check, --print-config round-trips, --help.
"$bin" --check >/dev/null || { echo "FAIL check on the embedded defaults"; fail=1; }
"$bin" --print-config >"$tmp/resolved.yaml" && "$bin" --config "$tmp/resolved.yaml" --check >/dev/null ||
    { echo "FAIL --print-config output does not validate"; fail=1; }
"$bin" --help | grep -q -- "--set KEY=VALUE" || { echo "FAIL --help"; fail=1; }
# Every shipped config validates; the multi-node template names placeholder files, so only its schema is
# checked. The demo config is the embedded default, spelled out.
for cfg in "$(dirname "$0")"/../../configs/*.yaml; do
    check=--check
    [ "$(basename "$cfg")" = multi_node.yaml ] && check=--print-config
    "$bin" --config "$cfg" $check >/dev/null || { echo "FAIL $cfg does not validate"; fail=1; }
done
diff <("$bin" --config "$(dirname "$0")/../../configs/demo.yaml" --print-config) <("$bin" --print-config) >/dev/null ||
    { echo "FAIL configs/demo.yaml differs from the embedded defaults (dsrl_train --print-config)"; fail=1; }
# What disaggregated mode cannot run is refused before any compute, not silently ignored (issue 22).
expect_error disaggregated_no_rollout "dist.rollout_ranks: dist.mode disaggregated needs at least one rollout rank" \
    --set dist.mode=disaggregated --set dist.max_policy_lag=0 --set run.output_dir="$tmp/dis"
expect_error disaggregated_stages "run.stages: dist.mode disaggregated runs a GRPO job" --set dist.mode=disaggregated \
    --set dist.rollout_ranks=1 --set dist.max_policy_lag=0 --set run.output_dir="$tmp/dis"
# The world size is known once the ranks are up: the error follows the bootstrap's log line.
out=$("$bin" --set dist.mode=disaggregated --set dist.rollout_ranks=1 --set dist.max_policy_lag=0 \
    --set 'run.stages=[grpo]' --set run.output_dir="$tmp/dis" 2>&1) &&
    { echo "FAIL disaggregated_world: exit code 0"; fail=1; }
grep -q "config error: dist.rollout_ranks: 1 rollout ranks leave no trainer rank in a job of 1 ranks" <<<"$out" ||
    { echo "FAIL disaggregated_world: want the rollout_ranks error, got:"; echo "$out"; fail=1; }
# One message per error under mpirun (every rank finds the same config error; rank 0 reports it), and the label is
# the process's real rank even before MPI is up (from the launcher's environment).
if [ -n "$mpiexec" ]; then
    out=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$mpiexec" --oversubscribe -np 2 "$bin" \
          --set trainer.zero_stage=7 2>&1)
    n=$(grep -c "config error" <<<"$out")
    if [ "$n" -ne 1 ] || ! grep -q "^\[rank 0\] config error: .*trainer.zero_stage" <<<"$out"; then
        echo "FAIL mpirun config error: expected one '[rank 0] config error' line, got $n:"; echo "$out"; fail=1
    else
        echo "ok   mpirun -np 2: one config error line, from rank 0"
    fi
    # Ranks given other configurations (one file per node, say) are one job's error before any work.
    out=$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "$mpiexec" --oversubscribe \
          -np 1 "$bin" --set run.output_dir="$tmp/two" : -np 1 "$bin" --set run.output_dir="$tmp/two" --set sft.lr=0.5 2>&1) &&
        { echo "FAIL ranks with different configurations ran"; fail=1; }
    if grep -q "config error: rank 1 runs another configuration than rank 0.*first differ at line [0-9]*: rank 0 '  lr: " <<<"$out"; then
        echo "ok   mpirun with two configurations: refused, naming the line"
    else
        echo "FAIL ranks with different configurations: want the error naming the differing line, got:"; echo "$out"; fail=1
    fi
fi
# Flags where a value belongs, a second --config, and config mistakes found by the start-up checks.
expect_error flag-as-value "--resume needs a value, got the option --check" --resume --check
expect_error two-configs "--config given twice" --config "$tmp/type.yaml" --config "$tmp/unknown.yaml"
printf '' >"$tmp/empty.yaml"
expect_error empty-config "is empty (no settings); omit --config to run the embedded demo job" --config "$tmp/empty.yaml"
expect_error missing-model "model.path" --set model.path="$tmp/no_model" --check
expect_error inf-lr "sft.lr: expected a finite number, got '.inf'" --set sft.lr=.inf
expect_error group-of-one "rollout.group_size: GRPO needs at least 2 samples per prompt" --set rollout.group_size=1 --check
expect_error greedy-grpo "rollout.temperature: 0 (greedy) gives every sample of a group the same tokens" \
    --set rollout.temperature=0 --check
expect_error top-k-one "rollout.top_k: 1 (greedy)" --set rollout.top_k=1 --check
# A data file's prompt that fills the context, found at start-up (not by the first rollout, after SFT).
printf '{"prompt": "%s", "answer": "1"}\n{"prompt": "short", "answer": "2"}\n' "$(head -c 3000 /dev/zero | tr '\0' x)" \
    >"$tmp/long.jsonl"
expect_error long-prompt "domains[reasoning].data: $tmp/long.jsonl: prompt 0 has 3005 tokens in the chat format; the model's context (max_position_embeddings) is 1024" \
    --set "domains[0].data=$tmp/long.jsonl" --check
# SFT examples cut before their first response token: warned per step, stopped after trainer.max_skipped_steps.
out=$("$bin" --set sft.max_seq_len=2 --set trainer.max_skipped_steps=2 --set run.output_dir="$tmp/cut" 2>&1)
if [ $? -ne 0 ] && grep -q "error: sft step 2: the last 2 steps trained nothing (trainer.max_skipped_steps): no example kept a response token once sft.max_seq_len (2 tokens) cut it" <<<"$out"; then
    echo "ok   sft-cut: stopped after 2 steps that trained nothing"
else
    echo "FAIL sft-cut: $out" | tail -5; fail=1
fi
# What cannot fit the machine's memory, said before anything runs (CPU: the weights alone; the cache pool given).
expect_error model-too-large "model: the weights alone need" --set run.device=cpu --set model.hidden_size=1000000000 --check
expect_error cache-too-large "rollout.cache_blocks: 100000000000 blocks of 16 slots need" --set run.device=cpu \
    --set rollout.cache_blocks=100000000000 --check
out=$(OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=2 "$bin" --set trainer.zero_stage=7 2>&1)
grep -q "^\[rank 1\] config error" <<<"$out" || { echo "FAIL the launcher's rank 1 is not named: $out"; fail=1; }
exit $fail
