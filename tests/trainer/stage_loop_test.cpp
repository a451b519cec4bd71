// The one stage loop (trainer/stage_loop.h) on 2 MPI ranks with a scripted stage: steps run in order from the
// checkpointed count, begin() says whether the stage is fresh, metrics are averaged over the ranks and written
// once per step, counts are globalized, checkpoints follow every_steps and the stage's end, and a resumed stage
// continues where its counter stands.
#include "trainer/stage_loop.h"

#include <mpi.h>

#include <nlohmann/json.hpp>

#include <fstream>

#include <gtest/gtest.h>

#include "core/error.h"
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

// A stage whose steps from `from` on train nothing: skipped updates (non-finite gradients) or, with `fail`, every
// sample failed; a step in between that trains resets the count.
class IdleStage final : public Stage {
public:
    IdleStage(int64_t from, bool fail, int64_t trains_at = -1, bool empty = false)
        : from_(from), fail_(fail), trains_at_(trains_at), empty_(empty) {}
    std::string name() const override { return "idle"; }
    int64_t total_steps() const override { return 20; }
    void begin(bool) override {}
    StepOutput step(int64_t step) override {
        const bool idle = step >= from_ && step != trains_at_;
        if (fail_) return {{{"samples", 4.0}, {"reward_failed", idle ? 4.0 : 1.0}}, 0};
        if (empty_) return {{}, 0, idle ? "no target token in the batch" : ""};
        return {{{"skipped_steps", idle ? 1.0 : 0.0}}, idle ? 1 : 0};
    }
    double globalize(std::map<std::string, double>& m, int world) const override {
        for (const char* k : {"samples", "reward_failed"}) {
            if (m.count(k)) m[k] *= world;
        }
        return 1.0;
    }
    std::string console_text(const std::map<std::string, double>&) const override { return ""; }

private:
    int64_t from_;
    bool fail_;
    int64_t trains_at_;
    bool empty_;
};

TEST(StageLoopTest, StopsAfterMaxSkippedStepsThatTrainedNothing) {
    const dist::Communicator world = dist::Communicator::world(60);
    JobConfig job;
    job.trainer.checkpoint.every_steps = 1;
    job.trainer.max_skipped_steps = 3;
    dsa::Model policy = dsa::Model::random(job.model, 1, at::kCPU);
    AdamW optimizer({}, job.trainer.optimizer.adamw);
    TrainingState state;
    JobContext ctx{job, world, c10::Device(c10::kCPU), policy, optimizer, state};
    MetricsLog log("", "", false);
    ctx.metrics = &log;
    std::vector<int64_t> checkpoints;
    ctx.checkpoint = [&] { checkpoints.push_back(state.stage_steps["idle"]); };
    const auto message = [&](IdleStage stage) {
        state.stage_steps["idle"] = 0;
        checkpoints.clear();
        try {
            run_stage(stage, ctx);
        } catch (const Error& e) {
            return std::string(e.what());
        }
        return std::string();
    };
    // Steps 2, 3, 4 skip their updates: the job stops at step 5 (done), before its checkpoint.
    std::string msg = message(IdleStage(2, false));
    EXPECT_NE(msg.find("idle step 5: the last 3 steps trained nothing (trainer.max_skipped_steps)"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("non-finite gradients"), std::string::npos) << msg;
    EXPECT_EQ(checkpoints, (std::vector<int64_t>{1, 2, 3, 4}));
    // Every sample failed: the same rule.
    msg = message(IdleStage(2, true));
    EXPECT_NE(msg.find("every sample failed"), std::string::npos) << msg;
    // Nothing to train on (an SFT batch cut before its targets): the same rule, with the stage's reason.
    msg = message(IdleStage(2, false, -1, true));
    EXPECT_NE(msg.find("idle step 5: the last 3 steps trained nothing (trainer.max_skipped_steps): no target token"),
              std::string::npos)
        << msg;
    // A step that trains in between starts the count again: steps 2, 3 idle, 4 trains, 5, 6, 7 idle -> stop at 8.
    msg = message(IdleStage(2, false, 4));
    EXPECT_NE(msg.find("idle step 8:"), std::string::npos) << msg;
    // 0: never stops.
    job.trainer.max_skipped_steps = 0;
    EXPECT_EQ(message(IdleStage(0, false)), "");
    EXPECT_EQ(state.stage_steps["idle"], 20);
}

// A metrics row that does not reach the file (here /dev/full: every write fails with ENOSPC) stops the job, naming
// the file, instead of losing the rows without a word.
TEST(StageLoopTest, AMetricsRowThatCannotBeWrittenIsAnError) {
    MetricsLog log("/dev/full", "", true);
    try {
        log.write("sft", 3, {{"loss", 1.0}});
        FAIL() << "the lost row went unnoticed";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("cannot write the metrics file /dev/full (sft step 3)"), std::string::npos)
            << e.what();
    }
}

}  // namespace
}  // namespace dsrl::trainer
