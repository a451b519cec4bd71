// Training checkpoints (issue 8): exact continuation after save/load, `latest` and keep_last, leftovers of an
// interrupted save, and refusal of a checkpoint of another model, resharding to another world size.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/core/grad_mode.h>
#include <ATen/ops/randint.h>

#include <limits>
#include <tuple>

#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "tests/test_util.h"
#include "trainer/checkpoint.h"

namespace dsrl::trainer {
namespace {

ModelConfig tiny() {
    ModelConfig c;
    c.vocab_size = 64;
    return c;
}

std::vector<Param> params_of(dsa::Model& m) {
    std::vector<Param> out;
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.trainable) out.push_back({t.name, t.tensor->requires_grad_(true), decays(t.name, *t.tensor)});
    }
    return out;
}

// One deterministic training step: loss on fixed tokens, AdamW.
void train_step(dsa::Model& m, AdamW& opt, int step) {
    at::Generator gen = rng::make_cpu_generator(500 + step);
    const at::Tensor ids = at::randint(64, {2, 12}, gen, at::kLong);
    m.forward({ids}).logits.log_softmax(-1).mean().neg().backward();
    clip_grad_norm(opt.params(), 1.0);
    opt.step(1e-3);
    opt.zero_grad();
}

TEST(CheckpointTest, ResumeContinuesBitForBit) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model a = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt_a(params_of(a), {});
    for (int s = 0; s < 3; ++s) train_step(a, opt_a, s);
    at::Generator gen = rng::make_cpu_generator(77);
    TrainingState st{.step = 3,
                     .stage_steps = {{"sft", 2}},
                     .policy_version = 3,
                     .skipped_steps = 1,
                     .cursors = {{"reasoning", "0:12"}}};
    st.config_yaml = "run: {name: t}\n";
    const std::string dir = save_checkpoint(root, a, opt_a, st, gen.get_state(), 2, nullptr);
    EXPECT_EQ(dir, root + "/step-00000005") << "numbered by job steps (SFT + RL)";
    for (int s = 3; s < 6; ++s) train_step(a, opt_a, s);

    // A fresh process: other initial weights, state from the checkpoint.
    dsa::Model b = dsa::Model::random(tiny(), 99, at::kCPU);
    AdamW opt_b(params_of(b), {});
    EXPECT_EQ(resolve_resume(root, "auto"), dir);
    const LoadedCheckpoint ck = load_checkpoint(dir, b, 1, 0);
    opt_b.load_state(ck.optimizer, 3, dir);
    EXPECT_EQ(ck.state.step, 3);
    EXPECT_EQ(ck.state.stage_steps, (std::map<std::string, int64_t>{{"sft", 2}}));
    EXPECT_EQ(ck.state.skipped_steps, 1);
    EXPECT_EQ(ck.state.cursors.at("reasoning"), "0:12");
    EXPECT_EQ(ck.state.config_yaml, st.config_yaml);
    EXPECT_TRUE(ck.rng_state.equal(gen.get_state()));
    for (int s = 3; s < 6; ++s) train_step(b, opt_b, s);
    auto ta = a.named_tensors(), tb = b.named_tensors();
    for (size_t i = 0; i < ta.size(); ++i) EXPECT_TRUE(ta[i].tensor->equal(*tb[i].tensor)) << ta[i].name;
}

TEST(CheckpointTest, LatestKeepLastAndInterruptedSaves) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    EXPECT_EQ(resolve_resume(root, "auto"), "") << "no checkpoint yet: a fresh start";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    for (int64_t step : {10, 20, 30}) save_checkpoint(root, m, opt, {.step = step}, gen.get_state(), 2, nullptr);
    EXPECT_FALSE(fs::exists(root + "/step-00000010")) << "keep_last 2";
    EXPECT_TRUE(fs::exists(root + "/step-00000020"));
    EXPECT_EQ(resolve_resume(root, "auto"), root + "/step-00000030");
    // A save killed midway leaves only a .tmp directory: resume ignores it, the next save removes it.
    fs::make_dirs(root + "/.step-00000040.tmp/model");
    EXPECT_EQ(resolve_resume(root, "auto"), root + "/step-00000030");
    save_checkpoint(root, m, opt, {.step = 50}, gen.get_state(), 2, nullptr);
    EXPECT_FALSE(fs::exists(root + "/.step-00000040.tmp"));
    EXPECT_THROW(resolve_resume(root, root + "/nope"), CheckpointError);
}

// A diverged policy is never written: the save refuses NaN / infinite weights, naming the tensor, and leaves the
// checkpoints before it as they were; a model checkpoint holding them is refused on load, naming file and tensor.
TEST(CheckpointTest, NonFiniteWeightsAreNeitherSavedNorLoaded) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    const std::string good = save_checkpoint(root, m, opt, {.step = 1}, gen.get_state(), 3, nullptr);
    const std::string hf = tmp.path() + "/hf";
    at::Tensor* norm = nullptr;
    for (dsa::NamedTensor& t : m.named_tensors()) {
        if (t.name == "model.norm.weight") norm = t.tensor;
    }
    ASSERT_NE(norm, nullptr);
    {
        at::NoGradGuard no_grad;
        (*norm)[3] = std::numeric_limits<float>::quiet_NaN();
        (*norm)[5] = std::numeric_limits<float>::infinity();
    }
    try {
        save_checkpoint(root, m, opt, {.step = 2}, gen.get_state(), 3, nullptr);
        FAIL() << "a checkpoint of NaN weights was written";
    } catch (const Error& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("not writing checkpoint " + root + "/step-00000002"));
        EXPECT_THAT(e.what(), ::testing::HasSubstr("'model.norm.weight' holds 2 of"));
    }
    EXPECT_FALSE(fs::exists(root + "/step-00000002"));
    EXPECT_FALSE(fs::exists(root + "/.step-00000002.tmp"));
    EXPECT_EQ(resolve_resume(root, "auto"), good);
    // The same weights in an HF checkpoint (Model::save writes what it holds): refused on load.
    m.save(hf, {.dtype = at::kFloat});
    try {
        dsa::Model::load(hf, tiny(), c10::Device(c10::kCPU));
        FAIL() << "NaN weights loaded";
    } catch (const CheckpointError& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("tensor 'model.norm.weight' holds 2 non-finite value(s)"));
    }
}

TEST(CheckpointTest, ReshardsToAnotherWorldSizeAndRefusesAnotherModel) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    TrainingState st{.step = 1, .world_size = 2};
    st.cursors["prompts.math"] = "0:7";
    const std::string dir = save_checkpoint(root, m, opt, st, gen.get_state(), 3, nullptr);
    // Written by 2 ranks, resumed on 4: rank 0 reads its own files; rank 3, which the writer did not have, takes rank
    // 0's cursors and no generator state (it keeps its fresh seeding).
    const LoadedCheckpoint own = load_checkpoint(dir, m, 4, 0);
    EXPECT_EQ(own.state.world_size, 2);
    EXPECT_EQ(own.state.cursors.at("prompts.math"), "0:7");
    EXPECT_GT(own.rng_state.numel(), 0);
    const LoadedCheckpoint added = load_checkpoint(dir, m, 4, 3);
    EXPECT_EQ(added.state.cursors.at("prompts.math"), "0:7");
    EXPECT_EQ(added.rng_state.numel(), 0);
    EXPECT_EQ(load_checkpoint(dir, m, 1, 0).state.cursors.at("prompts.math"), "0:7");
    ModelConfig other = tiny();
    other.hidden_size = 32;
    dsa::Model o = dsa::Model::random(other, 1, at::kCPU);
    try {
        load_checkpoint(dir, o, 2, 0);
        FAIL();
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("hidden_size (checkpoint 64, job 32)"), std::string::npos) << e.what();
    }
}

TEST(CheckpointTest, DisaggregatedJobResumesOnlyOnItsLayout) {
    testing::TempDir tmp;
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    const std::string dir = save_checkpoint(
        tmp.path() + "/ckpt", m, opt, {.step = 1, .world_size = 3, .rollout_ranks = 1}, gen.get_state(), 3, nullptr);
    EXPECT_EQ(load_checkpoint(dir, m, 3, 0, 1).state.rollout_ranks, 1);
    for (const auto& [world, rollout, want] :
         {std::tuple{2, 0,
                     "written by 3 ranks, 1 of them rollout workers (disaggregated); this job has 2 colocated ranks"},
          std::tuple{4, 1, "this job has 4 ranks, 1 of them rollout workers"},
          std::tuple{3, 2, "this job has 3 ranks, 2 of them rollout workers"}}) {
        try {
            load_checkpoint(dir, m, world, 0, rollout);
            FAIL() << world << " " << rollout;
        } catch (const CheckpointError& e) {
            EXPECT_THAT(e.what(), ::testing::HasSubstr(want));
            EXPECT_THAT(e.what(), ::testing::HasSubstr("resume with the same mpirun -np and dist.rollout_ranks"));
        }
    }
    // A colocated checkpoint resumed by a disaggregated job of the same world size: refused too.
    const std::string colocated =
        save_checkpoint(tmp.path() + "/c", m, opt, {.step = 1, .world_size = 3}, gen.get_state(), 3, nullptr);
    EXPECT_THROW(load_checkpoint(colocated, m, 3, 0, 1), CheckpointError);
}

// Verified checkpoints (issue 25 item 7): a manifest with the size and CRC-32C of every file is written last;
// resume checks it. Truncated, bit-flipped and missing files are caught, naming the file; --resume auto falls back
// to the newest checkpoint that verifies; --resume PATH to a corrupt one is an error.
std::string resume_error(const std::string& root, const std::string& spec) {
    try {
        resolve_resume(root, spec);
    } catch (const CheckpointError& e) {
        return e.what();
    }
    return "<accepted>";
}

void flip_byte(const std::string& path, int64_t offset) {
    std::string bytes = fs::read_file(path);
    bytes[static_cast<size_t>(offset)] = static_cast<char>(bytes[static_cast<size_t>(offset)] ^ 0x10);
    fs::write_file_atomic(path, {bytes});
}

TEST(CheckpointTest, ManifestCatchesTruncatedBitFlippedAndMissingFiles) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    const std::string dir = save_checkpoint(root, m, opt, {.step = 1}, gen.get_state(), 3, nullptr);
    ASSERT_TRUE(fs::exists(dir + "/manifest.json"));
    EXPECT_EQ(verify_checkpoint(dir, nullptr), "");
    const std::string weights = dir + "/model/model.safetensors";
    const std::string pristine = fs::read_file(weights);
    // One bit flipped in the middle of the weights (the safetensors header still parses).
    flip_byte(weights, static_cast<int64_t>(pristine.size() / 2));
    EXPECT_THAT(verify_checkpoint(dir, nullptr), ::testing::HasSubstr(weights + " fails its checksum"));
    EXPECT_THAT(resume_error(root, dir),
                ::testing::HasSubstr("--resume " + dir + ": " + weights + " fails its checksum"));
    // Truncated.
    fs::write_file_atomic(weights, {pristine.substr(0, pristine.size() - 100)});
    EXPECT_THAT(verify_checkpoint(dir, nullptr), ::testing::HasSubstr("truncated"));
    // Missing.
    fs::write_file_atomic(weights, {pristine});
    EXPECT_EQ(verify_checkpoint(dir, nullptr), "");
    fs::remove_tree(dir + "/rng.rank0.bin");
    EXPECT_THAT(verify_checkpoint(dir, nullptr), ::testing::HasSubstr(dir + "/rng.rank0.bin is missing"));
    // A lost or damaged manifest is not mistaken for an old checkpoint.
    fs::write_file_atomic(dir + "/rng.rank0.bin", {std::string(1, 'x')});
    fs::remove_tree(dir + "/manifest.json");
    EXPECT_THAT(verify_checkpoint(dir, nullptr), ::testing::HasSubstr("manifest.json is missing"));
    fs::write_file_atomic(dir + "/manifest.json", {"{not json"});
    EXPECT_THAT(verify_checkpoint(dir, nullptr), ::testing::HasSubstr("manifest.json is corrupt"));
}

TEST(CheckpointTest, AutoResumeFallsBackToTheNewestCheckpointThatVerifies) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    for (int64_t step : {10, 20, 30}) save_checkpoint(root, m, opt, {.step = step}, gen.get_state(), 3, nullptr);
    EXPECT_EQ(resolve_resume(root, "auto"), root + "/step-00000030");
    flip_byte(root + "/step-00000030/optimizer.safetensors", 200);
    EXPECT_EQ(resolve_resume(root, "auto"), root + "/step-00000020") << "the corrupt latest is skipped";
    fs::remove_tree(root + "/step-00000020/state.json");
    EXPECT_EQ(resolve_resume(root, "auto"), root + "/step-00000010") << "an incomplete one too";
    flip_byte(root + "/step-00000010/model/model.safetensors", 300);
    EXPECT_THAT(resume_error(root, "auto"), ::testing::HasSubstr("no checkpoint under " + root + " verifies"));
    // A checkpoint written before manifests existed (no "manifest" in state.json) resumes unverified.
    const std::string old = save_checkpoint(root, m, opt, {.step = 40}, gen.get_state(), 5, nullptr);
    fs::remove_tree(old + "/manifest.json");
    std::string state = fs::read_file(old + "/state.json");
    state.replace(state.find("\"manifest\": true"), std::string("\"manifest\": true").size(), "\"old\": 1");
    fs::write_file_atomic(old + "/state.json", {state});
    bool legacy = false;
    EXPECT_EQ(verify_checkpoint(old, nullptr, &legacy), "");
    EXPECT_TRUE(legacy);
    EXPECT_EQ(resolve_resume(root, "auto"), old);
}

}  // namespace
}  // namespace dsrl::trainer
