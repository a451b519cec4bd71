// Runtime choices shared by several libraries (core's ops, the model, the trainer): parameter dtype and the
// implementation of kernel-backed ops. Each library owns its configuration schema beside the code that reads it
// (dsa/config.h, rollout/config.h, grpo/config.h, rewards/config.h, core/dist/config.h, trainer/config.h);
// trainer/config.h assembles the job (JobConfig, load_job_config). docs/configuration.md is generated from them.
#pragma once

namespace dsrl {

enum class DType { kFloat32, kBFloat16 };
enum class Impl { kAuto, kReference, kCuda };

}  // namespace dsrl
