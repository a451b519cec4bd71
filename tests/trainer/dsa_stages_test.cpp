// The DSA training stages (issue 9): the retrieval token stream (determinism, cursor restore, layout) and the
// step wiring of indexer_warmup / sparse_train / dense_lm: which parameter group each step trains. The model part
// (the indexer losses, detached indexer inputs) is covered by tests/dsa/indexer_loss_test.cpp.
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/ops/equal.h>

#include <cmath>
#include <map>
#include <string>

#include "core/error.h"
#include "core/fs.h"
#include "data/token_data.h"
#include "dsa/indexer_loss.h"
#include "text/tokenizer.h"
#include "trainer/dsa_stages.h"

namespace dsrl::trainer {
namespace {

JobConfig dsa_job() {
    JobConfig job;
    job.model.index_topk = 8;
    job.dsa.data = "synthetic:retrieval?keys=12";
    job.dsa.seq_len = 40;
    job.dsa.batch_size = 2;
    job.dsa.query_tile = 16;
    return job;
}

std::map<std::string, at::Tensor> snapshot(dsa::Model& m) {
    std::map<std::string, at::Tensor> out;
    for (dsa::NamedTensor& t : m.named_tensors()) out[t.name] = t.tensor->detach().clone();
    return out;
}

struct StageSetup {
    JobConfig job = dsa_job();
    dsa::Model model = dsa::Model::random(job.model, 7, at::kCPU);
    std::unique_ptr<AdamW> opt;
    std::unique_ptr<text::Tokenizer> tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    StageSetup() {
        std::vector<Param> params;
        for (dsa::NamedTensor& t : model.named_tensors()) {
            if (t.trainable) params.push_back({t.name, t.tensor->requires_grad_(true), decays(t.name, *t.tensor)});
        }
        opt = std::make_unique<AdamW>(params, job.trainer.optimizer.adamw);
    }
    data::TokenBatch batch(int64_t index = 0) {
        data::TokenStream s(data::make_token_source(job.dsa.data, job.dsa.seq_len, *tok, ""), 0, 1, index);
        return s.next(job.dsa.batch_size);
    }
};

// Counts the tensors of each group that changed (exactly: any bit).
std::pair<int, int> changed(const std::map<std::string, at::Tensor>& before, dsa::Model& m, int* indexer_total) {
    int idx = 0, rest = 0;
    *indexer_total = 0;
    for (dsa::NamedTensor& t : m.named_tensors()) {
        const bool is_idx = is_indexer_param(t.name);
        *indexer_total += is_idx;
        if (!at::equal(before.at(t.name), *t.tensor)) (is_idx ? idx : rest) += 1;
    }
    return {idx, rest};
}

TEST(TokenDataTest, RetrievalIsDeterministicAndWellFormed) {
    JobConfig job = dsa_job();
    const auto tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    const auto a = data::make_token_source(job.dsa.data, 40, *tok, "");
    const auto b = data::make_token_source(job.dsa.data, 40, *tok, "");
    const int64_t K = 12;
    for (int64_t i = 0; i < 5; ++i) {
        const data::TokenWindow w = a->get(i);
        EXPECT_EQ(w.ids, b->get(i).ids);
        EXPECT_EQ(w.loss_mask, b->get(i).loss_mask);
        ASSERT_EQ(w.ids.size(), 40u);
        EXPECT_EQ(w.ids[0], tok->bos_id());
        // The dictionary maps every symbol once; each chain token is the value of the previous one's record.
        std::map<int64_t, int64_t> next;
        for (int64_t j = 1; j <= K; ++j) {
            const int64_t r = w.ids[j] - 16 - K;
            ASSERT_GE(r, 0);
            ASSERT_LT(r, K * K);
            EXPECT_TRUE(next.emplace(r / K, r % K).second);
        }
        for (int64_t t = K + 1; t + 1 < 40; ++t) {
            EXPECT_EQ(w.ids[t + 1] - 16, next.at(w.ids[t] - 16)) << "window " << i << " position " << t;
            EXPECT_EQ(w.loss_mask[t], 1);
        }
        for (int64_t t = 0; t <= K; ++t) EXPECT_EQ(w.loss_mask[t], 0);
        EXPECT_EQ(w.loss_mask[39], 0);
    }
    EXPECT_NE(a->get(0).ids, a->get(1).ids);
    EXPECT_NE(a->get(0).ids, data::make_token_source(job.dsa.data, 40, *tok, "", 1000003)->get(0).ids);
}

TEST(TokenDataTest, CursorRestoreContinuesTheStreamAndRanksAreDisjoint) {
    JobConfig job = dsa_job();
    const auto tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    const auto src = data::make_token_source(job.dsa.data, 40, *tok, "");
    data::TokenStream a(src, 0, 1), b(src, 0, 1);
    a.next(3);
    const int64_t cursor = a.cursor();
    EXPECT_EQ(cursor, 3);
    b.restore(cursor);
    EXPECT_TRUE(at::equal(a.next(2).input_ids, b.next(2).input_ids));
    data::TokenStream r0(src, 0, 2), r1(src, 1, 2);
    EXPECT_FALSE(at::equal(r0.next(1).input_ids, r1.next(1).input_ids));
    EXPECT_THROW(b.restore(-1), DataError);
}

TEST(TokenDataTest, CursorCountsTheJobsWindowsAndContinuesOnAnotherWorldSize) {
    JobConfig job = dsa_job();
    const auto tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    const auto src = data::make_token_source(job.dsa.data, 40, *tok, "");
    const int64_t first = 5;  // a held-out prefix
    // Two ranks take two windows each: the job's windows first + [0, 4), the same cursor on both ranks.
    data::TokenStream r0(src, 0, 2, first), r1(src, 1, 2, first);
    r0.next(2);
    r1.next(2);
    ASSERT_EQ(r0.cursor(), 4);
    ASSERT_EQ(r1.cursor(), 4);
    // Resumed on three ranks: rank r's windows are first + 4 + 3k + r, the ones a single rank takes next.
    data::TokenStream one(src, 0, 1, first);
    one.restore(4);
    const at::Tensor want = one.next(6).input_ids;
    for (int r = 0; r < 3; ++r) {
        data::TokenStream s(src, r, 3, first);
        s.restore(r0.cursor());
        const at::Tensor got = s.next(2).input_ids;
        EXPECT_TRUE(at::equal(got[0], want[r])) << r;
        EXPECT_TRUE(at::equal(got[1], want[3 + r])) << r;
        EXPECT_EQ(s.cursor(), 10);
    }
}

TEST(TokenDataTest, JsonlTextIsPackedIntoWindowsAndErrorsNameTheSource) {
    JobConfig job = dsa_job();
    const auto tok = text::make_tokenizer(job.model.path, job.model.vocab_size);
    const std::string dir = fs::make_temp_dir("dsa_tokens");
    const std::string path = fs::join(dir, "t.jsonl");
    fs::write_file_atomic(path, {"{\"text\": \"hello world\"}\n\n{\"text\": \"abc\"}\n"});
    const auto src = data::make_token_source(path, 8, *tok, "");
    const data::TokenWindow w = src->get(0);
    ASSERT_EQ(w.ids.size(), 8u);
    EXPECT_EQ(w.ids[0], 16 + 'h');
    EXPECT_EQ(w.loss_mask[7], 0);
    EXPECT_EQ(src->get(2).ids, src->get(0).ids);  // 16 tokens: two windows per epoch
    EXPECT_THROW(data::make_token_source(path, 64, *tok, ""), DataError);
    fs::write_file_atomic(path, {"{\"txt\": 1}\n"});
    try {
        data::make_token_source(path, 4, *tok, "");
        FAIL() << "expected DataError";
    } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find(path + ":1"), std::string::npos) << e.what();
    }
    EXPECT_THROW(data::make_token_source("synthetic:retrieval?keys=40", 64, *tok, ""), ConfigError);  // vocab too small
    EXPECT_THROW(data::make_token_source("synthetic:retrieval?nope=1", 64, *tok, ""), ConfigError);
    EXPECT_THROW(data::make_token_source("synthetic:lookup", 64, *tok, ""), ConfigError);
    fs::remove_tree(dir);
}

TEST(DsaStagesTest, WarmupChangesOnlyIndexerTensors) {
    StageSetup s;
    const auto before = snapshot(s.model);
    const auto m = indexer_warmup_step(s.model, *s.opt, s.batch(), s.job, nullptr);
    int total = 0;
    const auto [idx, rest] = changed(before, s.model, &total);
    EXPECT_EQ(rest, 0) << "warm-up changed a non-indexer tensor";
    EXPECT_EQ(idx, total) << "every indexer tensor should have moved";
    EXPECT_GT(total, 0);
    EXPECT_TRUE(std::isfinite(m.at("loss")));
    EXPECT_GT(m.at("loss"), 0);
    EXPECT_GE(m.at("recall_mean"), 0);
    EXPECT_LE(m.at("recall_mean"), 1 + 1e-9);
    EXPECT_TRUE(m.count("recall/layer0") && m.count("recall/layer2"));
    EXPECT_EQ(m.at("lr"), s.job.dsa.indexer_lr);
    EXPECT_EQ(m.at("skipped_steps"), 0);
    for (const Param& p : s.opt->params()) {
        EXPECT_TRUE(p.tensor.requires_grad()) << p.name << " left frozen";
        EXPECT_FALSE(p.tensor.grad().defined()) << p.name << " keeps a gradient";
        EXPECT_EQ(p.lr_scale, 1.0) << p.name;
    }
}

TEST(DsaStagesTest, WarmupLowersTheIndexerLossOnAFixedBatch) {
    StageSetup s;
    const data::TokenBatch b = s.batch();
    const double first = indexer_warmup_step(s.model, *s.opt, b, s.job, nullptr).at("loss");
    double last = first;
    for (int i = 0; i < 15; ++i) last = indexer_warmup_step(s.model, *s.opt, b, s.job, nullptr).at("loss");
    EXPECT_LT(last, first);
}

TEST(DsaStagesTest, SparseTrainChangesBothGroupsAndEachLossReachesOnlyItsGroup) {
    StageSetup s;
    const data::TokenBatch b = s.batch();
    // Wiring of the two loss terms: the LM loss of the sparse forward gives the indexer no gradient, the indexer
    // loss gives the rest none (what sparse_train_step sums).
    for (int term = 0; term < 2; ++term) {
        s.opt->zero_grad(true);
        const dsa::ForwardOutput out =
            s.model.forward({.input_ids = b.input_ids}, {.return_topk = true,
                                                         .return_indexer = true,
                                                         .return_attention = true,
                                                         .detach_indexer_inputs = true,
                                                         .path = dsa::AttentionPath::kSparse});
        at::Tensor loss;
        if (term == 0) {
            loss = masked_nll_sum(out.logits, b).first;
        } else {
            loss = dsa::indexer_sparse_loss(out.indexer[1], out.attention[1], out.topk[1], out.query_pos, out.key_valid,
                                            16)
                       .loss;
        }
        loss.backward();
        for (const Param& p : s.opt->params()) {
            const bool idx = is_indexer_param(p.name);
            const bool has = p.tensor.grad().defined() && p.tensor.grad().abs().sum().item<double>() > 0;
            if (term == 0 && idx) {
                EXPECT_FALSE(has) << "LM loss reached " << p.name;
            }
            if (term == 1 && !idx) {
                EXPECT_FALSE(has) << "indexer loss reached " << p.name;
            }
        }
    }
    s.opt->zero_grad(true);
    const auto before = snapshot(s.model);
    const auto m = sparse_train_step(s.model, *s.opt, b, s.job, nullptr);
    int total = 0;
    const auto [idx, rest] = changed(before, s.model, &total);
    EXPECT_EQ(idx, total);
    EXPECT_GT(rest, 0);
    EXPECT_NEAR(m.at("loss"), m.at("lm_loss") + m.at("indexer_loss"), 1e-5);
    EXPECT_GT(m.at("indexer_loss"), 0);
    EXPECT_EQ(m.at("lr"), s.job.dsa.lr);
    EXPECT_EQ(m.at("indexer_lr"), s.job.dsa.indexer_lr);
    for (const Param& p : s.opt->params()) EXPECT_EQ(p.lr_scale, 1.0) << p.name << ": lr scale leaked";
}

TEST(DsaStagesTest, SparseTrainRunsTheIndexerAtItsOwnLearningRate) {
    // Adam's first step moves each element by ~lr (sign of the gradient): the indexer's by indexer_lr (lr_scale
    // indexer_lr / lr), the rest's by the tiny dsa.lr.
    StageSetup s;
    s.job.dsa.lr = 1e-7;
    s.job.trainer.optimizer.adamw.weight_decay = 0;
    *s.opt = AdamW(s.opt->params(), {.weight_decay = 0});
    const auto before = snapshot(s.model);
    sparse_train_step(s.model, *s.opt, s.batch(), s.job, nullptr);
    double max_idx = 0, max_rest = 0;
    for (dsa::NamedTensor& t : s.model.named_tensors()) {
        const double d = (*t.tensor - before.at(t.name)).abs().max().item<double>();
        (is_indexer_param(t.name) ? max_idx : max_rest) = std::max(is_indexer_param(t.name) ? max_idx : max_rest, d);
    }
    EXPECT_NEAR(max_idx, s.job.dsa.indexer_lr, 0.2 * s.job.dsa.indexer_lr);
    EXPECT_LE(max_rest, 1.5e-7);
    EXPECT_GT(max_rest, 0);
}

TEST(DsaStagesTest, DenseLmLeavesTheIndexerUntouchedAndEvaluationIsConsistent) {
    StageSetup s;
    const auto before = snapshot(s.model);
    dense_lm_step(s.model, *s.opt, s.batch(), s.job, nullptr);
    int total = 0;
    const auto [idx, rest] = changed(before, s.model, &total);
    EXPECT_EQ(idx, 0);
    EXPECT_GT(rest, 0);
    // index_topk >= seq_len: the sparse path selects every visible key, so it equals the dense one.
    s.job.model.index_topk = 64;
    dsa::Model wide(s.job.model, s.model.weights());
    const auto m = dsa_evaluate(wide, {s.batch(5)}, s.job, nullptr);
    EXPECT_NEAR(m.at("task_loss_dense"), m.at("task_loss_sparse"), 1e-4);
    EXPECT_NEAR(m.at("recall_mean"), 1.0, 1e-5);
    const auto narrow = dsa_evaluate(s.model, {s.batch(5)}, s.job, nullptr);
    EXPECT_NEAR(narrow.at("task_loss_dense"), m.at("task_loss_dense"), 1e-5);
    EXPECT_LT(narrow.at("recall_mean"), 1.0);
}

}  // namespace
}  // namespace dsrl::trainer
