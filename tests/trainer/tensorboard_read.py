#!/usr/bin/env python3
"""Reads the event file(s) dsrl's TensorBoardWriter wrote in DIR with TensorBoard's own reader and checks
them against DIR/expected.json (written by the gtest TensorBoard.WritesForPythonReader).

    tensorboard_read.py DIR [--expected FILE]

Checks: every record passes TensorBoard's TFRecord reader with both CRCs verified; the first event has
file_version "brain.Event:2"; for every tag, the (step, value) sequence equals the expected one in order,
values compared at float32 precision (NaN must be NaN, +-Inf must match), explicit wall times equal.
Exits non-zero with a message naming the first mismatch.
"""
import argparse
import glob
import json
import math
import os
import re
import struct
import sys

from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import errors as tb_errors
from tensorboard.compat.tensorflow_stub import pywrap_tensorflow

NAME_RE = re.compile(r"^events\.out\.tfevents\.\d+\..+\.\d+\.\d+$")


def fail(msg):
    print(f"tensorboard_read.py: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


def same_f32(got, want):
    if math.isnan(want):
        return math.isnan(got)
    return got == f32(want)


def strict_record_count(path):
    """Reads every record with TensorBoard's stub reader, which verifies both CRCs. The event loaders
    swallow DataLossError (they treat it as a truncated tail), so corruption would only show as missing
    events; here it is an error."""
    reader = pywrap_tensorflow.PyRecordReader_New(path)
    n = 0
    while True:
        try:
            reader.GetNext()
        except tb_errors.OutOfRangeError:
            return n
        except tb_errors.DataLossError as e:
            fail(f"{path}: record {n}: {e}")
        n += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir")
    ap.add_argument("--expected", help="JSON with the expected scalars (default DIR/expected.json)")
    args = ap.parse_args()
    expected_path = args.expected or os.path.join(args.dir, "expected.json")
    try:
        with open(expected_path) as f:
            expected = json.load(f)
    except OSError as e:
        fail(f"cannot read {expected_path}: {e} (did dsrl_tensorboard_write run?)")

    files = sorted(glob.glob(os.path.join(args.dir, "*tfevents*")))
    if len(files) != 1:
        fail(f"expected exactly one event file in {args.dir}, found {files}")
    path = files[0]
    if not NAME_RE.match(os.path.basename(path)):
        fail(f"event file name {os.path.basename(path)!r} does not match events.out.tfevents.<secs>.<host>.<pid>.<n>")

    # 1. Framing: TensorBoard's TFRecord reader with CRC checks, every record accounted for.
    n_records = strict_record_count(path)
    raw = list(event_file_loader.LegacyEventFileLoader(path).Load())
    if len(raw) != n_records:
        fail(f"{path}: the event loader returned {len(raw)} events, the record reader {n_records}")
    if not raw or raw[0].file_version != expected["file_version"]:
        fail(f"{path}: first event's file_version is {raw[0].file_version if raw else None!r}, "
             f"expected {expected['file_version']!r}")

    # 2. Scalars as TensorBoard's scalar dashboard sees them (EventAccumulator over the directory).
    acc = EventAccumulator(args.dir, size_guidance={"scalars": 0})
    acc.Reload()
    want_by_tag = {}
    for s in expected["scalars"]:
        want_by_tag.setdefault(s["tag"], []).append(s)
    got_tags = sorted(acc.Tags()["scalars"])
    if got_tags != sorted(want_by_tag):
        fail(f"scalar tags {got_tags}, expected {sorted(want_by_tag)}")
    n_checked = 0
    for tag, wants in want_by_tag.items():
        got = acc.Scalars(tag)
        if len(got) != len(wants):
            fail(f"tag {tag!r}: {len(got)} scalars, expected {len(wants)}: got steps {[g.step for g in got]}")
        for i, (g, w) in enumerate(zip(got, wants)):
            want_value = float(w["value"])  # also parses "nan", "inf", "-inf"
            if g.step != w["step"]:
                fail(f"tag {tag!r} #{i}: step {g.step}, expected {w['step']}")
            if not same_f32(g.value, want_value):
                fail(f"tag {tag!r} step {g.step}: value {g.value!r}, expected {want_value!r} "
                     f"(float32 {f32(want_value)!r})")
            if "wall_time" in w and g.wall_time != w["wall_time"]:
                fail(f"tag {tag!r} step {g.step}: wall_time {g.wall_time!r}, expected {w['wall_time']!r}")
            n_checked += 1
    print(f"tensorboard_read.py: OK: {path}: {n_records} records, {n_checked} scalars in {len(want_by_tag)} tags")


if __name__ == "__main__":
    main()
