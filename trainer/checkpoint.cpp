#include "trainer/checkpoint.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/logical_not.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/zeros.h>

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

#include "core/checksum.h"
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
constexpr const char* kManifest = "manifest.json";

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

// Whether `rank`'s cursors in checkpoint `dir` hold a rollout worker's queue (a disaggregated job's, written before
// state.json recorded dist.rollout_ranks).
bool saved_queue(const std::string& dir, int rank) {
    const std::string path = fs::join(dir, cursors_file(rank));
    if (!fs::exists(path)) return false;
    const Json j = Json::parse(read_text(path), nullptr, /*allow_exceptions=*/false);
    return j.is_object() && j.contains("rollout_queue");
}

// Note [Checkpoint manifest]
// The last file of a checkpoint: manifest.json lists every other file (relative path, size, CRC-32C), written by
// rank 0 once every rank's files are complete and just before the directory is renamed into place. The ranks hash
// the files in parallel (file i by rank i mod world; the directory is on a shared file system). state.json says
// "manifest": true, so a checkpoint that lost its manifest is told apart from one written before manifests
// existed (accepted unverified). Resume verifies the same way, in parallel, before loading anything.

// Every regular file under `dir` as a path relative to it, sorted; the manifest itself left out.
std::vector<std::string> files_under(const std::string& dir, const std::string& prefix = "") {
    std::vector<std::string> out;
    std::vector<std::string> names = fs::list_dir(dir);
    std::sort(names.begin(), names.end());
    for (const std::string& name : names) {
        const std::string rel = prefix.empty() ? name : fs::join(prefix, name);
        if (fs::is_dir(fs::join(dir, name))) {
            for (std::string& f : files_under(fs::join(dir, name), rel)) out.push_back(std::move(f));
        } else if (rel != kManifest) {
            out.push_back(rel);
        }
    }
    return out;
}

int rank_of(const dist::Communicator* comm) { return comm != nullptr && comm->size() > 1 ? comm->rank() : 0; }
int world_of(const dist::Communicator* comm) { return comm != nullptr && comm->size() > 1 ? comm->size() : 1; }

// This rank's share of `files` hashed, merged over the ranks: path -> {"bytes", "crc32c"} on every rank.
Json digests(const std::string& dir, const std::vector<std::string>& files, const dist::Communicator* comm) {
    Json mine = Json::object();
    for (size_t i = static_cast<size_t>(rank_of(comm)); i < files.size(); i += static_cast<size_t>(world_of(comm))) {
        const FileDigest d = crc32c_file(fs::join(dir, files[i]));
        mine[files[i]] = {{"bytes", d.size}, {"crc32c", absl::StrFormat("%08x", d.crc32c)}};
    }
    if (world_of(comm) == 1) return mine;
    Json all = Json::object();
    for (const std::string& part : comm->all_gather_bytes(mine.dump())) all.update(Json::parse(part));
    return all;
}

void write_manifest(const std::string& tmp, const dist::Communicator* comm) {
    const Json files = digests(tmp, files_under(tmp), comm);
    if (rank_of(comm) != 0) return;
    const Json manifest = {{"format", "dsrl checkpoint manifest"}, {"version", 1}, {"files", files}};
    fs::write_file_synced(fs::join(tmp, kManifest), {manifest.dump(1) + "\n"});
}

}  // namespace

std::string verify_checkpoint(const std::string& dir, const dist::Communicator* comm, bool* legacy) {
    if (legacy != nullptr) *legacy = false;
    const std::string manifest_path = fs::join(dir, kManifest);
    if (!fs::exists(manifest_path)) {
        bool expected = true;
        try {
            expected = Json::parse(fs::read_file(fs::join(dir, kState))).value("manifest", false);
        } catch (const std::exception&) {
            return absl::StrCat(fs::join(dir, kState), " is unreadable and there is no ", kManifest);
        }
        if (expected) return absl::StrCat(manifest_path, " is missing");
        if (legacy != nullptr) *legacy = true;  // written before manifests existed
        return "";
    }
    Json listed;
    try {
        listed = Json::parse(fs::read_file(manifest_path)).at("files");
        if (!listed.is_object()) throw std::runtime_error("\"files\" is not an object");
    } catch (const std::exception& e) {
        return absl::StrCat(manifest_path, " is corrupt: ", e.what());
    }
    std::vector<std::string> files;
    for (const auto& [path, info] : listed.items()) files.push_back(path);
    // Each rank checks its share; the first problem in file order wins on every rank.
    std::string problem;
    for (size_t i = static_cast<size_t>(rank_of(comm)); i < files.size(); i += static_cast<size_t>(world_of(comm))) {
        const std::string path = fs::join(dir, files[i]);
        const Json& info = listed[files[i]];
        try {
            if (!fs::exists(path)) {
                problem = absl::StrCat(path, " is missing");
                break;
            }
            const FileDigest d = crc32c_file(path);
            const int64_t bytes = info.at("bytes").get<int64_t>();
            const std::string crc = info.at("crc32c").get<std::string>();
            if (d.size != bytes) {
                problem = absl::StrCat(path, " has ", d.size, " bytes, the manifest says ", bytes, " (truncated?)");
                break;
            }
            if (absl::StrFormat("%08x", d.crc32c) != crc) {
                problem = absl::StrCat(path, " fails its checksum (CRC-32C ", absl::StrFormat("%08x", d.crc32c),
                                       ", the manifest says ", crc, "): the file is corrupt");
                break;
            }
        } catch (const std::exception& e) {
            problem = absl::StrCat(path, ": ", e.what());
            break;
        }
    }
    if (world_of(comm) == 1) return problem;
    for (const std::string& p : comm->all_gather_bytes(problem)) {
        if (!p.empty()) return p;
    }
    return "";
}

std::vector<std::string> step_dirs(const std::string& root) {
    std::vector<std::string> out;
    if (!fs::is_dir(root)) return out;
    for (const std::string& name : fs::list_dir(root)) {
        if (name.rfind("step-", 0) == 0 && name.size() == 13 && fs::is_dir(fs::join(root, name))) out.push_back(name);
    }
    return out;
}

std::string step_dir_name(int64_t step) { return absl::StrFormat("step-%08d", step); }

void check_finite_weights(const dsa::Model& model,
                          bool holds,
                          const dist::Communicator* comm,
                          const std::string& what) {
    std::string bad;  // this rank's first non-finite tensor, with its count
    if (holds) {
        // named_tensors() hands out pointers for loading; nothing is written through them here.
        std::vector<dsa::NamedTensor> tensors = const_cast<dsa::Model&>(model).named_tensors();
        std::vector<at::Tensor> counts;
        for (const dsa::NamedTensor& t : tensors) counts.push_back(at::logical_not(at::isfinite(*t.tensor)).sum());
        const at::Tensor all = counts.empty() ? at::zeros({0}, at::kLong) : at::stack(counts).cpu();
        const auto* n = all.data_ptr<int64_t>();
        for (size_t i = 0; i < tensors.size(); ++i) {
            if (n[i] > 0) {
                bad = absl::StrCat("'", tensors[i].name, "' holds ", n[i], " of ", tensors[i].tensor->numel());
                break;
            }
        }
    }
    if (comm != nullptr && comm->size() > 1) {
        for (const std::string& b : comm->all_gather_bytes(bad)) {
            if (!b.empty()) {
                bad = b;
                break;
            }
        }
    }
    if (!bad.empty()) {
        throw Error(absl::StrCat("not writing ", what, ": the policy's weights are not finite (", bad,
                                 " NaN or infinite values); training diverged (learning rate too high? a non-finite "
                                 "reward or input?) — the earlier checkpoints are kept as they were"));
    }
}

std::string save_checkpoint(const std::string& root,
                            const dsa::Model& model,
                            const AdamW& optimizer,
                            const TrainingState& state,
                            const at::Tensor& rng_state,
                            int64_t keep_last,
                            const dist::Communicator* comm,
                            const dsa::Model* reference,
                            bool trains) {
    const int rank = comm != nullptr ? comm->rank() : 0;
    check_finite_weights(model, trains, comm,
                         absl::StrCat("checkpoint ", fs::join(root, step_dir_name(state.job_step()))));
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
    // A disaggregated job's rollout workers (the last ranks) hold no optimizer state: loading reads the shards of
    // ranks 0, 1, ... up to the first missing one, the trainers'.
    const bool sharded =
        (optimizer.zero_stage() > 0 || model.expert_parallel() != nullptr) && comm != nullptr && comm->size() > 1;
    if (sharded && trains) {
        save_safetensors(fs::join(tmp, optimizer_shard_file(rank)), optimizer.state(),
                         {{"step", std::to_string(optimizer.steps())}});
    }
    // The model (and the KL reference) at its training dtype (bit-exact resume), written by rank 0; under expert
    // parallelism rank 0's expert-parallel group writes it, each rank its own experts. A rollout worker holds no
    // expert-parallel group and never writes.
    if (trains) {
        model.save_distributed(fs::join(tmp, kModel),
                               {.dtype = dsa::model_dtype(model.config()), .max_shard_bytes = int64_t{5} << 30},
                               rank == 0);
    }
    if (reference != nullptr && trains) {
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
                  {"rollout_ranks", state.rollout_ranks},
                  {"optimizer_steps", optimizer.steps()},
                  {"config_yaml", state.config_yaml},
                  {"manifest", true}};
        fs::write_file_synced(fs::join(tmp, kState), {j.dump(2) + "\n"});
    }
    barrier(comm);
    // Last: the manifest of every file (Note [Checkpoint manifest]); then the directory is published.
    write_manifest(tmp, comm);
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

namespace {

// "" when `dir` holds every file a resume reads and they verify against its manifest; else what is wrong.
std::string checkpoint_problem(const std::string& dir, const dist::Communicator* comm) {
    if (!fs::exists(dir)) return absl::StrCat("checkpoint ", dir, " does not exist");
    if (!fs::is_dir(dir)) return absl::StrCat("checkpoint ", dir, " is not a directory");
    for (const char* need : {kState, kOptimizer, kModel}) {
        const bool shards = std::string(need) == kOptimizer && fs::exists(fs::join(dir, optimizer_shard_file(0)));
        if (!shards && !fs::exists(fs::join(dir, need))) {
            return absl::StrCat("checkpoint ", dir, " is incomplete or not a dsrl checkpoint: no ", need);
        }
    }
    bool legacy = false;
    const std::string problem = verify_checkpoint(dir, comm, &legacy);
    if (legacy && rank_of(comm) == 0) {
        DSRL_LOG(warn) << "checkpoint " << dir << " predates checkpoint manifests: resuming from it unverified";
    }
    return problem;
}

}  // namespace

std::string resolve_resume(const std::string& root, const std::string& spec, const dist::Communicator* comm) {
    if (spec != "auto") {
        const std::string problem = checkpoint_problem(spec, comm);
        if (!problem.empty()) throw CheckpointError(absl::StrCat("--resume ", spec, ": ", problem));
        return spec;
    }
    // The checkpoint `latest` names first, then every other one newest first: a corrupt checkpoint is skipped.
    std::vector<std::string> candidates;
    const std::string latest = fs::join(root, kLatest);
    if (fs::exists(latest)) {
        std::string name = read_text(latest);
        while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
        candidates.push_back(name);
    }
    std::vector<std::string> dirs = step_dirs(root);
    for (auto it = dirs.rbegin(); it != dirs.rend(); ++it) {
        if (candidates.empty() || *it != candidates.front()) candidates.push_back(*it);
    }
    std::vector<std::string> skipped;
    for (const std::string& name : candidates) {
        const std::string dir = fs::join(root, name);
        const std::string problem = checkpoint_problem(dir, comm);
        if (problem.empty()) return dir;
        if (rank_of(comm) == 0) {
            DSRL_LOG(warn) << "--resume auto: skipping checkpoint " << dir << ": " << problem
                           << "; trying an older one";
        }
        skipped.push_back(problem);
    }
    if (skipped.empty()) return "";  // no checkpoint yet: a fresh start
    throw CheckpointError(absl::StrCat("--resume auto: no checkpoint under ", root, " verifies (",
                                       absl::StrJoin(skipped, "; "),
                                       "); remove them or pass --resume PATH to one, or start without --resume"));
}

LoadedCheckpoint load_checkpoint(
    const std::string& dir, dsa::Model& model, int world_size, int rank, int rollout_ranks) {
    LoadedCheckpoint out;
    const std::string state_path = fs::join(dir, kState);
    Json j;
    // A count: a JSON integer in [0, max] (a float such as 1e300 or 3.7 is an error, not a cast).
    auto count = [&](const Json& v, const std::string& key, int64_t max) {
        if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > max) {
            throw CheckpointError(
                absl::StrCat(state_path, ": \"", key, "\" must be an integer in [0, ", max, "], got ", v.dump()));
        }
        return v.get<int64_t>();
    };
    constexpr int64_t kMaxCount = int64_t{1} << 53;
    try {
        j = Json::parse(read_text(state_path));
        out.state.step = count(j.at("step"), "step", kMaxCount);
        if (j.contains("stage_steps")) {
            if (!j.at("stage_steps").is_object()) {
                throw CheckpointError(absl::StrCat(state_path, ": \"stage_steps\" must be an object"));
            }
            for (const auto& [stage, v] : j.at("stage_steps").items())
                out.state.stage_steps[stage] = count(v, "stage_steps." + stage, kMaxCount);
        }
        out.state.policy_version = count(j.at("policy_version"), "policy_version", kMaxCount);
        out.state.skipped_steps = count(j.at("skipped_steps"), "skipped_steps", kMaxCount);
        out.state.world_size = static_cast<int>(count(j.at("world_size"), "world_size", 1 << 24));
        if (j.contains("rollout_ranks")) {
            out.state.rollout_ranks =
                static_cast<int>(count(j.at("rollout_ranks"), "rollout_ranks", out.state.world_size));
        } else if (out.state.world_size == world_size) {
            out.state.rollout_ranks = rollout_ranks;  // before the key existed: the same world resumes as it always did
        } else {
            // Another world: a disaggregated job's rollout workers (its last ranks) saved their queue (-1:
            // disaggregated, rollout ranks unknown).
            out.state.rollout_ranks = saved_queue(dir, out.state.world_size - 1) ? -1 : 0;
        }
        out.state.config_yaml = j.at("config_yaml").get<std::string>();
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(absl::StrCat(state_path, ": ", e.what()));
    }
    const int written_by = out.state.world_size;
    if (written_by != world_size || out.state.rollout_ranks != rollout_ranks) {
        const auto layout = [](int world, int rollout) {
            if (rollout == 0) return absl::StrCat(world, " colocated ranks");
            if (rollout < 0) return absl::StrCat(world, " ranks, disaggregated");
            return absl::StrCat(world, " ranks, ", rollout, " of them rollout workers (disaggregated)");
        };
        if (out.state.rollout_ranks != 0 || rollout_ranks != 0) {
            throw CheckpointError(absl::StrCat(
                "checkpoint ", dir, " was written by ", layout(written_by, out.state.rollout_ranks), "; this job has ",
                layout(world_size, rollout_ranks),
                ": a disaggregated job resumes only on the layout that wrote it (its rollout workers' queued groups "
                "belong to their trainer ranks) — resume with the same mpirun -np and dist.rollout_ranks"));
        }
        if (rank == 0) {
            DSRL_LOG(warn) << "checkpoint " << dir << " was written by " << written_by << " ranks; this job has "
                           << world_size
                           << ": resharding (the model and optimizer state by name; the data streams continue where "
                              "they stopped, with this job's global batch of "
                           << world_size
                           << " x rollout.prompts_per_step / trainer.micro_batch_size). The run continues as one on "
                              "this layout would, to the summation order, not bit for bit";
        }
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
    // A rank the writing job did not have: rank 0's cursors (every rank's agree) and a freshly seeded generator.
    const int from = rank < written_by ? rank : 0;
    const std::string cursors_path = fs::join(dir, cursors_file(from));
    try {
        out.state.cursors = Json::parse(read_text(cursors_path)).get<std::map<std::string, std::string>>();
    } catch (const nlohmann::json::exception& e) {
        throw CheckpointError(absl::StrCat(cursors_path, ": ", e.what()));
    }
    if (rank < written_by) {
        const std::string bytes = read_text(fs::join(dir, rng_file(rank)));
        out.rng_state = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
        std::memcpy(out.rng_state.data_ptr(), bytes.data(), bytes.size());
    }
    if (fs::exists(fs::join(dir, kReference))) out.reference_dir = fs::join(dir, kReference);
    DSRL_LOG(info) << "resuming from " << dir << " (step " << out.state.step << ")";
    return out;
}

}  // namespace dsrl::trainer
