// The built-in code-interpreter environment (issue 20 item 5a): one tool, `python(code)`, that runs model-written
// Python in the sandbox (agent/sandbox.h: no network, CPU/memory/time limits, a private directory) and returns what
// it printed — stdout, then stderr, the exit status when non-zero, "(killed: time limit)" and the like — as the tool
// result. A task is {"question", "answer"}; verify gives 1 when the last assistant message contains the answer
// (case-insensitive, whitespace collapsed). Creating one where the sandbox cannot be made is an EnvironmentError
// saying why: model-written code never runs unconfined.
//
//   params: {"python": "python3", "cpu_s": 5, "memory_mb": 512, "wall_s": 10, "max_output": 4096}
#pragma once

#include "agent/environment.h"

namespace dsrl::agent {

/// Registers "code_interpreter" in `reg` (register_builtin_environments calls it).
void register_code_environment(EnvRegistry& reg);

}  // namespace dsrl::agent
