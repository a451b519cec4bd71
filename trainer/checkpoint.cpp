#include "trainer/checkpoint.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>
#include <absl/strings/str_join.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "core/fault.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/safetensors.h"
#include "dsa/hf_checkpoint.h"

namespace dsrl::trainer {
namespace {

using Json = nlohmann::json;

constexpr const char* kLatest = "latest";
constexpr const char* kState = "state.json";
constexpr const char* kOptimizer = "optimizer.safetensors";
constexpr const char* kModel = "model";
constexpr const char* kReference = "reference";

std::string rng_file(int rank) { return absl::StrCat("rng.rank", rank, ".bin"); }
std::string cursors_file(int rank) { return absl::StrCat("cursors.rank", rank, ".json"); }
// ZeRO 1/2: each rank's share of the optimizer state (the moments of the parameters it owns).
std::string optimizer_shard_file(int rank) { return absl::StrCat("optimizer.rank", rank, ".safetensors"); }

std::string read_text(const std::string& path) {
    try {
        return fs::read_file(path);
    } catch (const Error& e) {
        throw CheckpointError(e.what());
    }
}

void barrier(const dist::Communicator* comm) {
    if (comm != nullptr && comm->size() > 1) comm->barrier();
}

}  // namespace

std::vector<std::string> step_dirs(const std::string& root) {
    std::vector<std::string> out;
    if (!fs::is_dir(root)) return out;
    for (const std::string& name : fs::list_dir(root)) {
        if (name.rfind("step-", 0) == 0 && name.size() == 13 && fs::is_dir(fs::join(root, name))) out.push_back(name);
    }
    return out;
}

std::string step_dir_name(int64_t step) { return absl::StrFormat("step-%08d", step); }

std::string save_checkpoint(const std::string& root,
                            const dsa::Model& model,
                            const AdamW& optimizer,
                            const TrainingState& state,
                            const at::Tensor& rng_state,
                            int64_t keep_last,
                            const dist::Communicator* comm,
                            const dsa::Model* reference) {
    const int rank = comm != nullptr ? comm->rank() : 0;
    const std::string name = step_dir_name(state.job_step());
    const std::string tmp = fs::join(root, absl::StrCat(".", name, ".tmp"));
    const std::string final_dir = fs::join(root, name);
    if (rank == 0) {
        fs::make_dirs(root);
        fs::remove_temporaries(root);  // under the run lock (trainer/run_dir.h): no other writer is here
        fs::make_dirs(tmp);
    }
    barrier(comm);
    // Every rank: its generator state.
    const at::Tensor rng = rng_state.contiguous().cpu();
    fs::write_file_synced(fs::join(tmp, rng_file(rank)),
                          {std::string_view(static_cast<const char*>(rng.data_ptr()), rng.nbytes())});
    // Every rank: its data cursors (each rank draws its own prompts).
    fs::write_file_synced(fs::join(tmp, cursors_file(rank)), {Json(state.cursors).dump(2) + "\n"});
    // Every rank with sharded optimizer state: its shard, named by parameter (any layout loads it back).
    // (and with expert parallelism, where each rank holds other experts' moments: Note [Expert state names]).
    const bool sharded =
        (optimizer.zero_stage() > 0 || model.expert_parallel() != nullptr) && comm != nullptr && comm->size() > 1;
    if (sharded) {
        save_safetensors(fs::join(tmp, optimizer_shard_file(rank)), optimizer.state(),
                         {{"step", std::to_string(optimizer.steps())}});
    }
    // The model (and the KL reference) at its training dtype (bit-exact resume), written by rank 0; under expert
    // parallelism rank 0's expert-parallel group writes it, each rank its own experts.
    model.save_distributed(fs::join(tmp, kModel),
                           {.dtype = dsa::model_dtype(model.config()), .max_shard_bytes = int64_t{5} << 30}, rank == 0);
    if (reference != nullptr) {
        reference->save_distributed(
            fs::join(tmp, kReference),
            {.dtype = dsa::model_dtype(reference->config()), .max_shard_bytes = int64_t{5} << 30}, rank == 0);
    }
    if (rank == 0) {
        // Then the optimizer and the state.
        fault::kill_point("in_checkpoint", state.job_step(), rank);
        if (!sharded) {
            save_safetensors(fs::join(tmp, kOptimizer), optimizer.state(),
                             {{"step", std::to_string(optimizer.steps())}});
        }
        Json j = {{"step", state.step},
                  {"stage_steps", state.stage_steps},
                  {"policy_version", state.policy_version},
                  {"skipped_steps", state.skipped_steps},
                  {"world_size", state.world_size},
                  {"optimizer_steps", optimizer.steps()},
                  {"config_yaml", state.config_yaml}};
        fs::write_file_synced(fs::join(tmp, kState), {j.dump(2) + "\n"});
    }
    barrier(comm);
    if (rank == 0) {
        fs::fsync_dir(tmp);
        if (fs::exists(final_dir)) fs::remove_tree(final_dir);  // re-saving the same step replaces it
        if (::rename(tmp.c_str(), final_dir.c_str()) != 0) {
            throw CheckpointError(
                absl::StrCat("checkpoint ", final_dir, ": cannot rename ", tmp, " into place: ", std::strerror(errno)));
        }
        fs::fsync_dir(root);
        fs::write_file_atomic(fs::join(root, kLatest), {name + "\n"},
                              [&] { fault::kill_point("before_latest_rename", state.job_step(), rank); });
        const std::vector<std::string> dirs = step_dirs(root);
        for (size_t i = 0; keep_last > 0 && i + static_cast<size_t>(keep_last) < dirs.size(); ++i) {
            fs::remove_tree(fs::join(root, dirs[i]));
        }
        DSRL_LOG(info) << "checkpoint " << final_dir << " written (job step " << state.job_step() << ")";
    }
    barrier(comm);
    return final_dir;
}

std::string resolve_resume(const std::string& root, const std::string& spec) {
    std::string dir;
    if (spec == "auto") {
        const std::string latest = fs::join(root, kLatest);
        if (!fs::exists(latest)) return "";
        std::string name = read_text(latest);
        while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
        dir = fs::join(root, name);
    } else {
        dir = spec;
    }
    for (const char* need : {kState, kOptimizer, kModel}) {
        const bool shards = std::string(need) == kOptimizer && fs::exists(fs::join(dir, optimizer_shard_file(0)));
        if (!shards && !fs::exists(fs::join(dir, need))) {
            throw CheckpointError(
                absl::StrCat("checkpoint ", dir, " is incomplete or not a dsrl checkpoint: no ", need));
        }
    }
    return dir;
}

LoadedCheckpoint load_checkpoint(const std::string& dir, dsa::Model& model, int world_size, int rank) {
    LoadedCheckpoint out;
    const std::string state_path = fs::join(dir, kState);
    Json j;
    try {
        j = Json::parse(read_text(state_path));
        out.state.step = j.at("step").get<int64_t>();
        if (j.contains("stage_steps"))
            out.state.stage_steps = j.at("stage_steps").get<std::map<std::string, int64_t>>();
        out.state.policy_version = j.at("policy_version").get<int64_t>();
        out.state.skipped_steps = j.at("skipped_steps").get<int64_t>();
        out.state.world_size = j.at("world_size").get<int>();
        out.state.config_yaml = j.at("config_yaml").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(absl::StrCat(state_path, ": ", e.what()));
    }
    if (out.state.world_size != world_size) {
        throw CheckpointError(absl::StrCat("checkpoint ", dir, " was written by ", out.state.world_size,
                                           " ranks; this job has ", world_size,
                                           " (resharding is not supported: resume with the same world size)"));
    }
    // The model: same architecture, then the weights in place (optimizer and autograd keep their tensors).
    const dsa::HfCheckpointReader reader = dsa::HfCheckpointReader::open(fs::join(dir, kModel));
    const Json a = Json::parse(dsa::hf_config_json(reader.arch(), at::kFloat));
    const Json b = Json::parse(dsa::hf_config_json(model.config(), at::kFloat));
    if (a != b) {
        std::vector<std::string> diff;
        for (const auto& [k, v] : b.items()) {
            if (!a.contains(k) || a[k] != v)
                diff.push_back(
                    absl::StrCat(k, " (checkpoint ", a.contains(k) ? a[k].dump() : "absent", ", job ", v.dump(), ")"));
        }
        throw CheckpointError(absl::StrCat("checkpoint ", dir, " holds another model: ", absl::StrJoin(diff, "; ")));
    }
    const dsa::ModelWeights w = dsa::load_weights(reader, model.config(), model.device());
    {
        at::NoGradGuard no_grad;
        dsa::ModelWeights src = w;
        // Expert parallelism: the checkpoint holds every expert; this rank keeps its own.
        if (const moe::ExpertParallel* ep = model.expert_parallel()) {
            for (dsa::LayerWeights& l : src.layers) {
                if (l.is_moe) l.moe.experts = ep->local(l.moe.experts);
            }
        }
        auto dst = model.named_tensors();
        auto from = dsa::named_tensors(src, model.config());
        for (size_t i = 0; i < dst.size(); ++i) dst[i].tensor->copy_(*from[i].tensor);
    }
    // The optimizer state by parameter name, whichever ZeRO stage wrote it: optimizer.safetensors (ZeRO 0) or one
    // shard per rank of the writing job. Views of the mapped files: AdamW::load_state copies what this rank holds.
    std::vector<std::string> files;
    if (fs::exists(fs::join(dir, kOptimizer))) files.push_back(fs::join(dir, kOptimizer));
    for (int r = 0; fs::exists(fs::join(dir, optimizer_shard_file(r))); ++r)
        files.push_back(fs::join(dir, optimizer_shard_file(r)));
    for (const std::string& file : files) {
        const SafetensorsFile opt = SafetensorsFile::open(file);
        for (const SafetensorInfo& t : opt.tensors()) out.optimizer[t.name] = opt.get(t.name);
    }
    const std::string cursors_path = fs::join(dir, cursors_file(rank));
    try {
        out.state.cursors = Json::parse(read_text(cursors_path)).get<std::map<std::string, std::string>>();
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(absl::StrCat(cursors_path, ": ", e.what()));
    }
    const std::string rng_path = fs::join(dir, rng_file(rank));
    const std::string bytes = read_text(rng_path);
    out.rng_state = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
    std::memcpy(out.rng_state.data_ptr(), bytes.data(), bytes.size());
    if (fs::exists(fs::join(dir, kReference))) out.reference_dir = fs::join(dir, kReference);
    DSRL_LOG(info) << "resuming from " << dir << " (step " << out.state.step << ")";
    return out;
}

}  // namespace dsrl::trainer
