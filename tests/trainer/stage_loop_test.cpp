// The one stage loop (trainer/stage_loop.h) on 2 MPI ranks with a scripted stage: steps run in order from the
// checkpointed count, begin() says whether the stage is fresh, metrics are averaged over the ranks and written
// once per step, counts are globalized, checkpoints follow every_steps and the stage's end, and a resumed stage
// continues where its counter stands.
#include "trainer/stage_loop.h"

#include <mpi.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include <gtest/gtest.h>

#include "core/fs.h"

namespace dsrl::trainer {
namespace {

class ScriptedStage final : public Stage {
public:
    explicit ScriptedStage(int64_t total) : total_(total) {}
    std::string name() const override { return "scripted"; }
    int64_t total_steps() const override { return total_; }
    void begin(bool fresh) override { begins.push_back(fresh); }
    StepOutput step(int64_t step) override {
        steps.push_back(step);
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        // rank-dependent values: the loop must average them (value = step + rank, mean step + 0.5 on 2 ranks)
        return {{{"value", static_cast<double>(step + rank)},
                 {"tokens", 10.0},
                 {"ratio_min", 0.5 + rank},  // extremes over the ranks: 0.5 and 3 on 2 ranks
                 {"ratio_max", 3.0 - rank}},
                step == 1 ? 1 : 0};
    }
    double globalize(std::map<std::string, double>& m, int world) const override {
        m["tokens"] *= world;
        return m["tokens"];
    }
    std::string console_text(const std::map<std::string, double>& m) const override {
        return "value " + std::to_string(m.at("value"));
    }
    void after_step(int64_t done) override { after.push_back(done); }

    std::vector<bool> begins;
    std::vector<int64_t> steps, after;

private:
    int64_t total_;
};

TEST(StageLoopTest, RunsStepsAveragesMetricsAndCheckpointsOnCadence) {
    const dist::Communicator world = dist::Communicator::world(60);
    std::string dir = world.rank() == 0 ? fs::make_temp_dir("dsrl_stage_loop_test_") : "";
    world.broadcast_bytes(dir, 0);
    JobConfig job;
    job.trainer.checkpoint.every_steps = 2;
    job.trainer.log_every = 1;
    dsa::Model policy = dsa::Model::random(job.model, 1, at::kCPU);
    AdamW optimizer({}, job.trainer.optimizer.adamw);
    TrainingState state;
    JobContext ctx{job, world, c10::Device(c10::kCPU), policy, optimizer, state};
    MetricsLog log(fs::join(dir, "metrics.jsonl"), "", world.rank() == 0);
    ctx.metrics = &log;
    std::vector<int64_t> checkpoints;
    ctx.checkpoint = [&] { checkpoints.push_back(state.stage_steps["scripted"]); };

    ScriptedStage stage(5);
    ASSERT_TRUE(run_stage(stage, ctx));
    EXPECT_EQ(stage.begins, std::vector<bool>{true});
    EXPECT_EQ(stage.steps, (std::vector<int64_t>{0, 1, 2, 3, 4}));
    EXPECT_EQ(stage.after, (std::vector<int64_t>{1, 2, 3, 4, 5}));
    EXPECT_EQ(checkpoints, (std::vector<int64_t>{2, 4, 5}));  // every 2 steps and at the end
    EXPECT_EQ(state.stage_steps["scripted"], 5);
    EXPECT_EQ(state.skipped_steps, 1);
    if (world.rank() == 0) {
        fs::LineReader in(fs::join(dir, "metrics.jsonl"));
        std::string line;
        int64_t n = 0;
        while (in.next(line)) {
            const nlohmann::json j = nlohmann::json::parse(line);
            EXPECT_EQ(j.at("stage"), "scripted");
            EXPECT_EQ(j.at("step"), n + 1);
            EXPECT_DOUBLE_EQ(j.at("value").get<double>(), n + 0.5);  // mean of step + rank over 2 ranks
            EXPECT_DOUBLE_EQ(j.at("tokens").get<double>(), 20.0);    // globalized: 10 per rank
            EXPECT_DOUBLE_EQ(j.at("ratio_min").get<double>(), 0.5);  // the minimum over the ranks, not the mean
            EXPECT_DOUBLE_EQ(j.at("ratio_max").get<double>(), 3.0);
            EXPECT_GT(j.at("tokens_per_s").get<double>(), 0.0);
            ++n;
        }
        EXPECT_EQ(n, 5);
    }

    // A resumed stage continues from its counter; a finished one does not run.
    state.stage_steps["scripted"] = 3;
    ScriptedStage resumed(5);
    checkpoints.clear();
    ASSERT_TRUE(run_stage(resumed, ctx));
    EXPECT_EQ(resumed.begins, std::vector<bool>{false});
    EXPECT_EQ(resumed.steps, (std::vector<int64_t>{3, 4}));
    EXPECT_EQ(checkpoints, (std::vector<int64_t>{4, 5}));
    ScriptedStage finished(5);
    ASSERT_TRUE(run_stage(finished, ctx));
    EXPECT_TRUE(finished.begins.empty());
    EXPECT_TRUE(finished.steps.empty());
    world.barrier();
    if (world.rank() == 0) fs::remove_tree(dir);
}

}  // namespace
}  // namespace dsrl::trainer
