# Checks shared by the crash tests (sourced): after a killed job was resumed, compare it with an uninterrupted run.
# same_steps_and_weights UNINTERRUPTED_DIR RESUMED_DIR STEP_DIR
#   every (stage, step) has exactly one row in the resumed run's metrics.jsonl (the killed job's rows after its
#   last checkpoint were dropped) and the same rows as the uninterrupted run's; the final weights are equal bit
#   for bit. Prints what it checked; returns non-zero with a FAIL line otherwise.
same_steps_and_weights() {
    local a=$1 b=$2 step=$3
    rows() { sed -E 's/.*"stage":"([a-z_]+)".*"step":([0-9]+).*/\1 \2/' "$1" | sort; }
    local dups
    dups=$(rows "$b/metrics.jsonl" | uniq -d | tr '\n' ' ')
    [ -z "$dups" ] || { echo "FAIL: metrics.jsonl repeats steps after the resume: $dups"; return 1; }
    [ "$(rows "$a/metrics.jsonl")" = "$(rows "$b/metrics.jsonl")" ] ||
        { echo "FAIL: the resumed run's metrics.jsonl has other steps than the uninterrupted run's"; return 1; }
    # Every weight file (model.safetensors, or one per writer under expert parallelism), and the index.
    local ma="$a/checkpoints/$step/model" mb="$b/checkpoints/$step/model" f bytes=0
    [ "$(cd "$ma" && ls ./*.safetensors* | sort)" = "$(cd "$mb" && ls ./*.safetensors* | sort)" ] ||
        { echo "FAIL: the resumed run's model files differ from the uninterrupted run's"; return 1; }
    for f in "$ma"/*.safetensors*; do
        cmp -s "$f" "$mb/$(basename "$f")" ||
            { echo "FAIL: the resumed run's final weights differ from the uninterrupted run's ($(basename "$f"))"; return 1; }
        bytes=$((bytes + $(stat -c %s "$f")))
    done
    echo "one metrics row per step; final weights equal the uninterrupted run's bit for bit ($bytes bytes)"
}
