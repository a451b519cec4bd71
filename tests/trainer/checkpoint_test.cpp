// Training checkpoints (issue 8): exact continuation after save/load, `latest` and keep_last, leftovers of an
// interrupted save, and refusal of a checkpoint of another model or world size.
#include <gtest/gtest.h>

#include <ATen/ops/randint.h>

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

TEST(CheckpointTest, RefusesAnotherModelOrWorldSize) {
    testing::TempDir tmp;
    const std::string root = tmp.path() + "/ckpt";
    dsa::Model m = dsa::Model::random(tiny(), 1, at::kCPU);
    AdamW opt(params_of(m), {});
    at::Generator gen = rng::make_cpu_generator(1);
    const std::string dir = save_checkpoint(root, m, opt, {.step = 1, .world_size = 2}, gen.get_state(), 3, nullptr);
    try {
        load_checkpoint(dir, m, 4, 0);
        FAIL();
    } catch (const CheckpointError& e) {
        EXPECT_NE(std::string(e.what()).find("written by 2 ranks; this job has 4"), std::string::npos) << e.what();
    }
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

}  // namespace
}  // namespace dsrl::trainer
