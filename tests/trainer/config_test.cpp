#include "trainer/config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "core/error.h"
#include "tests/test_util.h"

namespace dsrl {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// Loads YAML text written to a temp file; returns the ConfigError message ("" when it loads).
std::string load_error(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
    testing::TempDir dir;
    const std::string path = dir.write("job.yaml", yaml);
    try {
        load_job_config(path, overrides);
    } catch (const ConfigError& e) {
        return e.what();
    }
    return "";
}

TEST(ConfigTest, EmbeddedDefaultsAreValid) {
    JobConfig cfg = load_job_config("", {});
    EXPECT_EQ(cfg.run.name, "demo");
    EXPECT_EQ(cfg.domains.size(), 2u);
    EXPECT_EQ(cfg.model.index_topk, 32);
    EXPECT_EQ(cfg.grpo.loss.agg, LossAgg::kSeqMean);
}

TEST(ConfigTest, ReadsTypedValuesAndEnums) {
    testing::TempDir dir;
    const std::string path = dir.write("job.yaml", R"(
run: {name: x, seed: 7, stages: [grpo]}
model: {hidden_size: 128, dtype: bfloat16, rope_scaling: {factor: 4.0}}
grpo: {loss_agg: token_mean, adv_norm: std, eps_high: 0.28}
domains:
  - {name: math, data: synthetic:arithmetic, beta: 0.0, rewards: [{module: math_answer}]}
)");
    JobConfig cfg = load_job_config(path, {});
    EXPECT_EQ(cfg.run.seed, 7);
    EXPECT_EQ(cfg.model.hidden_size, 128);
    EXPECT_EQ(cfg.model.dtype, DType::kBFloat16);
    EXPECT_DOUBLE_EQ(cfg.model.rope_scaling.factor, 4.0);
    EXPECT_EQ(cfg.grpo.loss.agg, LossAgg::kTokenMean);
    EXPECT_EQ(cfg.grpo.adv_norm, AdvNorm::kStd);
    EXPECT_DOUBLE_EQ(cfg.grpo.loss.eps_high, 0.28);
    ASSERT_EQ(cfg.domains.size(), 1u);  // a list in the file replaces the default list entirely
    EXPECT_EQ(cfg.domains[0].name, "math");
    ASSERT_EQ(cfg.domains[0].rewards.size(), 1u);
    EXPECT_DOUBLE_EQ(cfg.domains[0].rewards[0].weight, 1.0);
}

TEST(ConfigTest, UnknownKeyNamesPathFileLineAndSuggestion) {
    const std::string msg = load_error("model:\n  hidden_size: 64\n  hiden_size: 32\n");
    EXPECT_THAT(msg, HasSubstr("job.yaml:3:3"));
    EXPECT_THAT(msg, HasSubstr("unknown key 'model.hiden_size'"));
    EXPECT_THAT(msg, HasSubstr("did you mean 'model.hidden_size'"));
}

TEST(ConfigTest, UnknownKeyInWrongSectionSuggestsTheRightSection) {
    const std::string msg = load_error("grpo:\n  grad_clip: 1.0\n");
    EXPECT_THAT(msg, HasSubstr("unknown key 'grpo.grad_clip'"));
    EXPECT_THAT(msg, HasSubstr("'grad_clip' belongs to 'trainer.optimizer.grad_clip'"));
}

TEST(ConfigTest, UnknownTopLevelSection) {
    const std::string msg = load_error("modle: {hidden_size: 3}\n");
    EXPECT_THAT(msg, HasSubstr("unknown key 'modle'"));
    EXPECT_THAT(msg, HasSubstr("did you mean 'model'"));
}

TEST(ConfigTest, WrongTypeNamesKeyValueAndExpectation) {
    const std::string msg = load_error("model:\n  hidden_size: abc\n");
    EXPECT_THAT(msg, HasSubstr("job.yaml:2:16"));
    EXPECT_THAT(msg, HasSubstr("model.hidden_size: expected an integer, got 'abc'"));
    EXPECT_THAT(load_error("grpo: {keep_routing: maybe}\n"), HasSubstr("expected a boolean"));
    EXPECT_THAT(load_error("grpo: {eps_low: [1]}\n"), HasSubstr("grpo.eps_low: expected a finite number, got a list"));
    EXPECT_THAT(load_error("model: 3\n"), HasSubstr("model: expected a section"));
    EXPECT_THAT(load_error("model: {hidden_size: 1.5}\n"), HasSubstr("expected an integer, got '1.5'"));
}

// No setting means "infinite": .inf (an lr, a temperature) would only turn the weights into NaN steps later.
TEST(ConfigTest, NonFiniteNumbersAreRefused) {
    EXPECT_THAT(load_error("sft: {lr: .inf}\n"), HasSubstr("sft.lr: expected a finite number, got '.inf'"));
    EXPECT_THAT(load_error("rollout: {temperature: -.Inf}\n"), HasSubstr("rollout.temperature: expected a finite"));
    EXPECT_THAT(load_error("grpo: {delta: .nan}\n"), HasSubstr("grpo.delta: expected a finite number"));
    EXPECT_THAT(load_error("{}", {"sft.lr=inf"}), HasSubstr("--set sft.lr=inf: sft.lr: expected a finite number"));
    EXPECT_THAT(load_error("sft: {lr: 1e400}\n"), HasSubstr("expected a finite number"));
}

// yaml-cpp would keep the first of a key given twice and ignore the rest; a second document, likewise.
TEST(ConfigTest, DuplicateKeysExtraDocumentsAndEmptyFilesAreRefused) {
    std::string msg = load_error("rollout:\n  group_size: 4\n  group_size: 8\n");
    EXPECT_THAT(msg, HasSubstr("job.yaml:3:3: duplicate key 'rollout.group_size' (first given at line 2)"));
    EXPECT_THAT(load_error("rollout: {group_size: 4}\nrollout: {top_p: 0.5}\n"),
                HasSubstr("job.yaml:2:1: duplicate key 'rollout'"));
    EXPECT_THAT(load_error("domains:\n  - {name: a, data: x, name: b}\n"),
                HasSubstr("duplicate key 'domains[0].name'"));
    EXPECT_THAT(load_error("{}", {"domains.0.rewards=[{module: m, module: n}]"}),
                HasSubstr("duplicate key 'domains.0.rewards[0].module'"));
    EXPECT_THAT(load_error("run: {name: a}\n---\nrun: {name: b}\n"),
                HasSubstr("job.yaml:2: a second YAML document begins here"));
    EXPECT_THAT(load_error(""), HasSubstr("is empty (no settings); omit --config to run the embedded demo job"));
    EXPECT_THAT(load_error("# only a comment\n"), HasSubstr("is empty"));
    EXPECT_EQ(load_error("---\nrun: {name: a}\n"), "");  // one document with its marker
}

TEST(ConfigTest, OutOfRangeNamesBounds) {
    const std::string msg = load_error("grpo:\n  eps_low: 1.5\n");
    EXPECT_THAT(msg, HasSubstr("grpo.eps_low = 1.5 is out of range; allowed [0, 1)"));
    EXPECT_THAT(load_error("rollout: {top_p: 0}\n"), HasSubstr("rollout.top_p = 0 is out of range; allowed (0, 1]"));
    EXPECT_THAT(load_error("model: {hidden_size: 0}\n"), HasSubstr("model.hidden_size = 0 is out of range"));
}

TEST(ConfigTest, BadEnumListsChoicesAndSuggests) {
    const std::string msg = load_error("grpo: {loss_agg: tokenmean}\n");
    EXPECT_THAT(msg, HasSubstr("grpo.loss_agg = 'tokenmean' is not allowed; expected one of seq_mean, token_mean"));
    EXPECT_THAT(msg, HasSubstr("did you mean 'token_mean'"));
    EXPECT_THAT(load_error("run: {stages: [sft, rl]}\n"), HasSubstr("run.stages[1] = 'rl' is not allowed"));
}

TEST(ConfigTest, MissingRequiredKey) {
    const std::string msg = load_error("domains:\n  - {name: math}\n");
    EXPECT_THAT(msg, HasSubstr("missing required key 'domains[0].data'"));
    EXPECT_THAT(load_error("domains:\n  - {name: m, data: x, rewards: [{weight: 1}]}\n"),
                HasSubstr("missing required key 'domains[0].rewards[0].module'"));
}

TEST(ConfigTest, CrossFieldChecksNameTheKey) {
    EXPECT_THAT(load_error("model: {n_group: 2, topk_group: 3}\n"),
                HasSubstr("model.topk_group: topk_group (3) must not exceed n_group (2)"));
    EXPECT_THAT(load_error("model: {n_routed_experts: 9}\n"), HasSubstr("must be divisible by n_group"));
    EXPECT_THAT(load_error("domains: [{name: a, data: x}, {name: a, data: y}]\n"), HasSubstr("'a' appears twice"));
    EXPECT_THAT(load_error("dist: {rollout_ranks: 2}\n"), HasSubstr("only meaningful with mode: disaggregated"));
    EXPECT_THAT(load_error("run: {stages: [sft, grpo, sft]}\n"), HasSubstr("run.stages: stage 'sft' is listed twice"));
    EXPECT_THAT(load_error("run: {output_dir: \"\"}\n"), HasSubstr("run.output_dir: must not be empty"));
    EXPECT_THAT(load_error("trainer: {metrics_file: /tmp/m.jsonl}\n"),
                HasSubstr("trainer.metrics_file: must be a file name relative to run.output_dir"));

    EXPECT_THAT(load_error("dist: {max_policy_lag: 3}\n"), HasSubstr("dist.max_policy_lag"));
}

TEST(ConfigTest, MissingFileAndSyntaxError) {
    try {
        load_job_config("/nonexistent/job.yaml", {});
        FAIL() << "expected ConfigError";
    } catch (const ConfigError& e) {
        EXPECT_THAT(std::string(e.what()), HasSubstr("config file '/nonexistent/job.yaml' cannot be read"));
    }
    EXPECT_THAT(load_error("model: {hidden_size: 3\n"), HasSubstr("YAML syntax error"));
}

TEST(ConfigTest, OverridesApplyInOrderAndReachLists) {
    JobConfig cfg = load_job_config("", {"grpo.eps_high=0.3", "grpo.eps_high=0.28", "domains.1.weight=3",
                                         "domains[0].rewards[0].params={digits: 2}", "run.stages=[grpo]", "run.name="});
    EXPECT_DOUBLE_EQ(cfg.grpo.loss.eps_high, 0.28);
    EXPECT_DOUBLE_EQ(cfg.domains[1].weight, 3.0);
    EXPECT_EQ(cfg.domains[0].rewards[0].params.at("digits"), "2");
    EXPECT_EQ(cfg.run.stages, std::vector<std::string>{"grpo"});
    EXPECT_EQ(cfg.run.name, "");
}

TEST(ConfigTest, OverrideErrorsCiteTheOverride) {
    EXPECT_THAT(
        load_error("{}", {"model.hiden_size=3"}),
        HasSubstr("--set model.hiden_size=3: unknown key 'model.hiden_size'; did you mean 'model.hidden_size'"));
    EXPECT_THAT(load_error("{}", {"grpo.eps_low=abc"}),
                HasSubstr("--set grpo.eps_low=abc: grpo.eps_low: expected a finite number"));
    EXPECT_THAT(load_error("{}", {"noequals"}), HasSubstr("expected key.path=value"));
    EXPECT_THAT(load_error("{}", {"grpo.eps_low.x=1"}), HasSubstr("'grpo.eps_low' is a value, not a section"));
    EXPECT_THAT(load_error("domains: [{name: a, data: x}]\n", {"domains.5.weight=1"}),
                HasSubstr("'domains' is a list of 1 items; '5' is not a valid index"));
}

TEST(ConfigTest, ResolvedYamlRoundTrips) {
    JobConfig cfg = load_job_config("", {"grpo.eps_high=0.28", "model.rms_norm_eps=1e-5", "domains.0.beta=0.125"});
    const std::string yaml = to_yaml(cfg);
    testing::TempDir dir;
    JobConfig again = load_job_config(dir.write("resolved.yaml", yaml), {});
    EXPECT_EQ(to_yaml(again), yaml);
    EXPECT_DOUBLE_EQ(again.grpo.loss.eps_high, 0.28);
    EXPECT_DOUBLE_EQ(again.model.rms_norm_eps, 1e-5);
    EXPECT_DOUBLE_EQ(again.domains[0].beta, 0.125);
    EXPECT_THAT(yaml, Not(HasSubstr("1.0000000")));  // shortest round-trip formatting
}

TEST(ConfigTest, SchemaListsEveryFieldWithDocs) {
    const auto rows = config::schema_of<JobConfig>();
    bool found = false;
    for (const auto& r : rows) {
        EXPECT_FALSE(r.doc.empty()) << r.path << " has no documentation";
        if (r.path == "grpo.loss_agg") {
            found = true;
            EXPECT_EQ(r.type, "enum");
            EXPECT_EQ(r.default_value, "seq_mean");
            EXPECT_EQ(r.allowed, "seq_mean | token_mean");
        }
    }
    EXPECT_TRUE(found);
    EXPECT_THAT(config::schema_markdown(rows), HasSubstr("| `domains[].rewards[].module` | string | `(required)`"));
}

TEST(ConfigTest, EnvironmentOverridesDistTimeout) {
    setenv("DSRL_DIST_TIMEOUT_S", "42", 1);
    EXPECT_EQ(load_job_config("", {}).dist.timeout_s, 42);
    EXPECT_EQ(load_job_config("", {"dist.timeout_s=7"}).dist.timeout_s, 42);  // env wins over file and --set
    setenv("DSRL_DIST_TIMEOUT_S", "0", 1);
    EXPECT_THROW(load_job_config("", {}), ConfigError);
    unsetenv("DSRL_DIST_TIMEOUT_S");
    EXPECT_EQ(load_job_config("", {}).dist.timeout_s, 600);
}

TEST(ConfigTest, EditDistanceAndNearest) {
    EXPECT_EQ(config::edit_distance("kitten", "sitting"), 3u);
    EXPECT_EQ(config::edit_distance("LR", "lr"), 0u);
    EXPECT_EQ(config::nearest("hiden_size", {"hidden_size", "vocab_size"}), std::optional<std::string>("hidden_size"));
    EXPECT_EQ(config::nearest("zzzzzz", {"hidden_size"}), std::nullopt);
}

}  // namespace
}  // namespace dsrl
