#include "dsa/indexer_topk.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "core/rng.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

struct Inputs {
    at::Tensor q, k, w, pos, valid;
};

Inputs random_inputs(int64_t b, int64_t t, int64_t s, int64_t h, int64_t d, uint64_t seed) {
    auto gen = rng::make_cpu_generator(seed);
    Inputs in;
    in.q = at::randn({b, t, h, d}, gen);
    in.k = at::randn({b, s, d}, gen);
    in.w = at::randn({b, t, h}, gen);
    in.pos = (at::arange(t, at::kLong) + (s - t)).unsqueeze(0).expand({b, t}).contiguous();  // last t of s keys
    in.valid = at::ones({b, s}, at::kBool);
    return in;
}

// Checks the top-k property row by row, robust to ties: the selected keys are distinct and visible, their
// count is min(topk, #visible), the invalid slots are −1 and trail, and no unselected visible key scores
// higher than a selected one.
void expect_topk_property(const Inputs& in, const at::Tensor& idx, int64_t topk, double scale) {
    const at::Tensor scores = indexer_scores(in.q, in.k, in.w, scale);
    for (int64_t b = 0; b < idx.size(0); ++b) {
        for (int64_t t = 0; t < idx.size(1); ++t) {
            std::set<int64_t> visible;
            for (int64_t s = 0; s < in.k.size(1); ++s) {
                if (s <= in.pos[b][t].item<int64_t>() && in.valid[b][s].item<bool>()) visible.insert(s);
            }
            std::set<int64_t> chosen;
            bool seen_invalid = false;
            for (int64_t j = 0; j < topk; ++j) {
                const int64_t s = idx[b][t][j].item<int64_t>();
                if (s < 0) {
                    EXPECT_EQ(s, -1);
                    seen_invalid = true;
                    continue;
                }
                EXPECT_FALSE(seen_invalid) << "valid entry after an invalid one at b=" << b << " t=" << t;
                EXPECT_TRUE(visible.count(s)) << "key " << s << " not visible to b=" << b << " t=" << t;
                EXPECT_TRUE(chosen.insert(s).second) << "key " << s << " selected twice";
            }
            ASSERT_EQ(chosen.size(), std::min<size_t>(topk, visible.size())) << "b=" << b << " t=" << t;
            float min_chosen = INFINITY;
            for (int64_t s : chosen) min_chosen = std::min(min_chosen, scores[b][t][s].item<float>());
            for (int64_t s : visible) {
                if (!chosen.count(s)) {
                    EXPECT_LE(scores[b][t][s].item<float>(), min_chosen) << "b=" << b << " t=" << t;
                }
            }
        }
    }
}

TEST(IndexerTopkTest, ScoresMatchTheFormula) {
    const Inputs in = random_inputs(1, 3, 5, 2, 4, 1);
    const double scale = 0.5;
    const at::Tensor got = indexer_scores(in.q, in.k, in.w, scale);
    for (int64_t t = 0; t < 3; ++t) {
        for (int64_t s = 0; s < 5; ++s) {
            double want = 0;
            for (int64_t j = 0; j < 2; ++j) {
                const double dot = (in.q[0][t][j] * in.k[0][s]).sum().item<double>();
                want += in.w[0][t][j].item<double>() * std::max(0.0, scale * dot);
            }
            EXPECT_NEAR(got[0][t][s].item<double>(), want, 1e-5);
        }
    }
}

TEST(IndexerTopkTest, SelectsTheCausalTopKWithInvalidSlots) {
    const Inputs in = random_inputs(2, 24, 24, 3, 8, 2);
    for (const int64_t topk : {1, 5, 24, 40}) {
        const at::Tensor idx = indexer_topk(in.q, in.k, in.w, 0.35, in.pos, in.valid, topk, 7);
        ASSERT_EQ(idx.sizes(), (std::vector<int64_t>{2, 24, topk}));
        EXPECT_EQ(idx.scalar_type(), at::kInt);
        expect_topk_property(in, idx, topk, 0.35);
    }
}

TEST(IndexerTopkTest, FewVisibleKeysSelectsAllOfThem) {
    // Every query sees <= topk keys: DSA must equal dense causal attention, i.e. select every visible key.
    const Inputs in = random_inputs(1, 10, 10, 2, 4, 3);
    const at::Tensor idx = indexer_topk(in.q, in.k, in.w, 0.5, in.pos, in.valid, 16);
    for (int64_t t = 0; t < 10; ++t) {
        std::set<int64_t> chosen;
        for (int64_t j = 0; j < 16; ++j) {
            if (idx[0][t][j].item<int64_t>() >= 0) chosen.insert(idx[0][t][j].item<int64_t>());
        }
        std::set<int64_t> want;
        for (int64_t s = 0; s <= t; ++s) want.insert(s);
        EXPECT_EQ(chosen, want) << "query " << t;
    }
}

TEST(IndexerTopkTest, PaddingKeysAreNeverSelectedAndChunkingDoesNotMatter) {
    Inputs in = random_inputs(2, 12, 16, 2, 4, 4);
    in.valid[0].narrow(0, 0, 5).fill_(false);   // left padding in row 0
    in.valid[1].narrow(0, 13, 3).fill_(false);  // right padding in row 1
    for (const int64_t chunk : {1, 5, 12, 100}) {
        const at::Tensor idx = indexer_topk(in.q, in.k, in.w, 0.5, in.pos, in.valid, 6, chunk);
        expect_topk_property(in, idx, 6, 0.5);
    }
}

TEST(IndexerTopkTest, EqualScoresResolveToTheEarlierKey) {
    // q = 0: every score is exactly 0 (as ReLU often makes them); the earliest visible keys are chosen, and
    // shifting the sequence right by left padding shifts the selection with it.
    const at::Tensor q = at::zeros({1, 8, 2, 4});
    const at::Tensor k = at::randn({1, 8, 4});
    const at::Tensor w = at::ones({1, 8, 2});
    const at::Tensor pos = at::arange(8, at::kLong).unsqueeze(0);
    const at::Tensor idx = indexer_topk(q, k, w, 0.5, pos, {}, 3);
    EXPECT_EQ(idx[0][7].to(at::kLong).sum().item<int64_t>(), 0 + 1 + 2);
    at::Tensor valid = at::ones({1, 8}, at::kBool);
    valid[0].narrow(0, 0, 2).fill_(false);  // two padding slots in front
    const at::Tensor padded = indexer_topk(q, k, w, 0.5, pos, valid, 3);
    EXPECT_EQ(padded[0][7].to(at::kLong).sum().item<int64_t>(), 2 + 3 + 4);
}

TEST(IndexerTopkTest, RejectsBadShapes) {
    const Inputs in = random_inputs(1, 4, 4, 2, 4, 5);
    EXPECT_THROW(indexer_topk(in.q, in.k.narrow(2, 0, 3), in.w, 1.0, in.pos, in.valid, 2), c10::Error);
    EXPECT_THROW(indexer_topk(in.q, in.k, in.w, 1.0, in.pos.narrow(1, 0, 2), in.valid, 2), c10::Error);
    EXPECT_THROW(indexer_topk(in.q, in.k, in.w, 1.0, in.pos, in.valid, 0), c10::Error);
    EXPECT_EQ(indexer_topk(in.q.narrow(1, 0, 0), in.k, in.w.narrow(1, 0, 0), 1.0, in.pos.narrow(1, 0, 0), in.valid, 3)
                  .sizes(),
              (std::vector<int64_t>{1, 0, 3}));
}

}  // namespace
}  // namespace dsrl::dsa
