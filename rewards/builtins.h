// Built-in rule-based reward modules (SPEC §6): math/numeric answer verification, exact and regex match, the
// `<think>…</think>` format check, a length penalty and language consistency. register_builtins() (declared in
// rewards/reward.h) adds them to a Registry under these names:
//
//   math_answer           1/0 (params correct/wrong): last \boxed{…} (or `Answer:` line) vs meta["answer"]
//   exact_match           1/0: the answer part of the response equals meta["answer"]
//   regex_match           1/0: param `pattern` (or meta["pattern"]) found in the answer part
//   format                1/0: exactly one reasoning block at the start, then a non-empty answer
//   length_penalty        in [-scale, 0] (minus `truncated` when cut off): tokens over `target`
//   language_consistency  share in [0, 1] of the response's letters in the prompt's dominant script
//
// Responses are untrusted model output: no module throws or fails because of a response's text (any bytes,
// any length); failures are data problems (no reference answer, a bad per-sample pattern). Bad params throw
// ConfigError at creation. Their building blocks: rewards/answer.h (answers) and rewards/scripts.h (scripts).
#pragma once

#include "rewards/answer.h"
#include "rewards/reward.h"
#include "rewards/scripts.h"
