#!/usr/bin/env bash
# Verified checkpoints (issue 25 item 7) in dsrl_train on 2 ranks: every checkpoint carries manifest.json (size and
# CRC-32C of every file). A bit flipped in the latest checkpoint's weights: `--resume auto` skips it with a warning
# naming the file and resumes from the newest checkpoint that verifies, then finishes; `--resume PATH` to the corrupt
# checkpoint is an error naming the file. A truncated optimizer file and a missing rng file are caught the same way.
# Usage: verified_checkpoint_test.sh path/to/dsrl_train MPIEXEC
set -u
bin=$1
mpiexec=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1 DSRL_LOG_LEVEL=info
fail() { echo "FAIL: $*"; for f in "$tmp"/*.log; do echo "--- $f"; tail -8 "$f"; done; exit 1; }
job=(--set 'run.stages=[sft]' --set trainer.checkpoint.every_steps=1 --set trainer.checkpoint.keep_last=5
     --set trainer.tensorboard=false --set "run.output_dir=$tmp/run")
run() { "$mpiexec" --oversubscribe -np 2 "$bin" "${job[@]}" "$@"; }
flip() {  # flip FILE: one bit in the middle
    python3 - "$1" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
b[len(b) // 2] ^= 0x10
open(p, "wb").write(bytes(b))
PY
}
ck=$tmp/run/checkpoints
run --set sft.steps=4 >"$tmp/first.log" 2>&1 || fail "the first run failed"
for s in 1 2 3 4; do
    [ -f "$ck/step-0000000$s/manifest.json" ] || fail "step-0000000$s has no manifest.json"
done
flip "$ck/step-00000004/model/model.safetensors"
run --set sft.steps=6 --resume auto >"$tmp/auto.log" 2>&1 || fail "--resume auto did not fall back"
grep -q "skipping checkpoint $ck/step-00000004: $ck/step-00000004/model/model.safetensors fails its checksum" \
    "$tmp/auto.log" || fail "no warning naming the corrupt file"
grep -q "resuming from $ck/step-00000003" "$tmp/auto.log" || fail "did not resume from step 3"
[ "$(cat "$ck/latest")" = step-00000006 ] || fail "the resumed run did not finish"
echo "ok: --resume auto skipped the bit-flipped step-00000004 and resumed from step-00000003"
# --resume PATH to a corrupt checkpoint: an error naming the file, nothing trained.
flip "$ck/step-00000005/model/model.safetensors"
out=$(run --set sft.steps=8 --resume "$ck/step-00000005" 2>&1) && fail "--resume to a corrupt checkpoint ran"
echo "$out" | grep -q "step-00000005/model/model.safetensors fails its checksum" || fail "no error naming the file: $out"
[ "$(cat "$ck/latest")" = step-00000006 ] || fail "the refused run wrote a checkpoint"
echo "ok: --resume PATH to a corrupt checkpoint is refused naming the file"
# Truncated and missing files are caught the same way.
python3 -c "import sys; p=sys.argv[1]; b=open(p,'rb').read(); open(p,'wb').write(b[:len(b)-64])" \
    "$ck/step-00000006/optimizer.safetensors"
out=$(run --set sft.steps=8 --resume "$ck/step-00000006" 2>&1) && fail "a truncated checkpoint was accepted"
echo "$out" | grep -q "optimizer.safetensors has .* bytes, the manifest says .* (truncated?)" ||
    fail "no error naming the truncated file: $out"
rm "$ck/step-00000003/rng.rank1.bin"
out=$(run --set sft.steps=8 --resume "$ck/step-00000003" 2>&1) && fail "a checkpoint missing a file was accepted"
echo "$out" | grep -q "step-00000003/rng.rank1.bin is missing" || fail "no error naming the missing file: $out"
echo "ok: truncated and missing files refused, naming them"
echo "PASS"
