// The model under expert parallelism (Model::set_expert_parallel) on mpirun -np 2 and 4: each rank holds 1/P of
// every MoE layer's experts; logits, routes and the gradients of replicated weights equal the replicated model's
// on each rank's own tokens, expert gradients equal the replicated model's gradient of all ranks' summed loss,
// recorded routes replay, and gather_hf_tensors + save + load + set_expert_parallel round-trips.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/allclose.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <set>
#include <string>

#include "core/dist/communicator.h"
#include "core/error.h"
#include "core/fs.h"
#include "dsa/model.h"
#include "tests/model_fixtures.h"
#include "tests/mpi_test_util.h"
#include "tests/test_util.h"

namespace dsrl::dsa {
namespace {

using ::dsrl::testing::under_mpi;
using ::dsrl::testing::world;

Model make_model() {
    Model m = Model::random(testing::toy_model_config(/*index_topk=*/6), 3, at::kCPU);  // same on every rank
    testing::scale_weights(m, 4, 0.15, 0.05);
    return m;
}

// Within 1e-5 of the reference's largest magnitude (fp32 sums in another order: the exchanges regroup rows).
void expect_close(const at::Tensor& a, const at::Tensor& b, const std::string& what) {
    ASSERT_EQ(a.sizes(), b.sizes()) << what;
    const double scale = std::max(b.abs().max().item<double>(), 1e-12);
    const double diff = (a - b).abs().max().item<double>();
    EXPECT_LE(diff / scale, 1e-5) << what << ": max diff " << diff << " of max " << scale;
}

// The tests of a working layout need a group size dividing the toy model's 8 experts.
bool divides() { return 8 % world().size() == 0; }

TEST(ModelExpertParallelTest, EqualsTheReplicatedModel) {
    if (!under_mpi() || !divides()) GTEST_SKIP() << "needs mpirun with 2 or 4 ranks";
    const int rank = world().rank();
    Model rep = make_model();
    Model ep = make_model();
    ep.set_expert_parallel({.group = &world()});
    ASSERT_NE(ep.expert_parallel(), nullptr);
    EXPECT_EQ(ep.weights().layers[1].moe.experts.gate_proj.size(0), 8 / world().size());
    for (NamedTensor& t : rep.named_tensors()) t.tensor->requires_grad_(true);
    for (NamedTensor& t : ep.named_tensors()) t.tensor->requires_grad_(true);

    at::manual_seed(static_cast<uint64_t>(50 + rank));
    const at::Tensor ids = at::randint(50, {2, 12 + 2 * rank}, at::kLong);  // lengths differ per rank
    const at::Tensor c = at::randn({2, 12 + 2 * rank, 50});
    const ForwardOutput a = rep.forward({.input_ids = ids}, {.return_routes = true});
    const ForwardOutput b = ep.forward({.input_ids = ids}, {.return_routes = true});
    expect_close(b.logits, a.logits, "logits");
    for (size_t l = 0; l < a.routes.size(); ++l) EXPECT_TRUE(at::equal(a.routes[l], b.routes[l])) << "routes " << l;
    (a.logits * c).sum().backward();
    (b.logits * c).sum().backward();

    auto rep_named = rep.named_tensors();
    auto ep_named = ep.named_tensors();
    ASSERT_EQ(rep_named.size(), ep_named.size());
    const moe::ExpertParallel& g = *ep.expert_parallel();
    for (size_t i = 0; i < rep_named.size(); ++i) {
        const std::string& name = rep_named[i].name;
        at::Tensor want = rep_named[i].tensor->grad();
        const at::Tensor got = ep_named[i].tensor->grad();
        if (name.find(".mlp.experts.") != std::string::npos) {
            // A rank's experts collect the gradient of every rank's tokens: the replicated sum over ranks.
            want = want.contiguous();
            world().all_reduce(want);
            want = want.narrow(0, g.first_expert(), g.local_experts());
        }
        if (!want.defined()) {
            EXPECT_FALSE(got.defined()) << name;
            continue;
        }
        ASSERT_TRUE(got.defined()) << name;
        expect_close(got, want, name + " gradient");
    }

    // Keep-routing under expert parallelism: the recorded routes replayed give the same logits.
    at::NoGradGuard no_grad;
    const ForwardOutput r = ep.forward({.input_ids = ids}, {.replay_routes = &b.routes});
    expect_close(r.logits, b.logits, "replayed logits");
}

TEST(ModelExpertParallelTest, GatherAndShardedSaveRoundTrip) {
    if (!under_mpi() || !divides()) GTEST_SKIP() << "needs mpirun with 2 or 4 ranks";
    const Model rep = make_model();
    Model ep = make_model();
    ep.set_expert_parallel({.group = &world()});
    const auto gathered = ep.gather_hf_tensors();
    const auto full = hf_named_tensors(rep.weights(), rep.config());
    ASSERT_EQ(gathered.size(), full.size());
    for (size_t i = 0; i < full.size(); ++i) {
        EXPECT_EQ(gathered[i].first, full[i].first);
        EXPECT_TRUE(at::equal(gathered[i].second, full[i].second)) << full[i].first;
    }
    // Every rank writes its own experts (rank 0 also the rest and the index); the checkpoint loads whole and at the
    // same EP size.
    std::string dir = world().rank() == 0 ? fs::make_temp_dir("dsrl_ep_test_") : std::string();
    world().broadcast_bytes(dir, 0);
    ep.save_distributed(dir + "/model", {.dtype = at::kFloat}, /*write=*/world().rank() == 0);
    world().barrier();
    const nlohmann::json index = nlohmann::json::parse(fs::read_file(dir + "/model/model.safetensors.index.json"));
    std::set<std::string> files;
    for (const auto& [name, file] : index.at("weight_map").items()) files.insert(file.get<std::string>());
    EXPECT_EQ(files.size(), static_cast<size_t>(world().size())) << "one file per writer";
    EXPECT_EQ(index.at("weight_map").size(), full.size()) << "the index describes the whole model";
    const Model whole = Model::load(dir + "/model", rep.config(), at::kCPU);
    const auto loaded = hf_named_tensors(whole.weights(), whole.config());
    ASSERT_EQ(loaded.size(), full.size());
    for (size_t i = 0; i < full.size(); ++i) EXPECT_TRUE(at::equal(loaded[i].second, full[i].second)) << full[i].first;
    Model back = Model::load(dir + "/model", rep.config(), at::kCPU);
    back.set_expert_parallel({.group = &world()});
    auto a = ep.named_tensors();
    auto b = back.named_tensors();
    for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(at::equal(*a[i].tensor, *b[i].tensor)) << a[i].name;
    // Asked on the last rank only, with small files: the group still writes, each rank several numbered files.
    ep.save_distributed(dir + "/small", {.dtype = at::kFloat, .max_shard_bytes = 4096},
                        /*write=*/world().rank() == world().size() - 1);
    world().barrier();
    const Model small = Model::load(dir + "/small", rep.config(), at::kCPU);
    const auto small_tensors = hf_named_tensors(small.weights(), small.config());
    for (size_t i = 0; i < full.size(); ++i) EXPECT_TRUE(at::equal(small_tensors[i].second, full[i].second));
    // A writer that fails (here the leader: the target's parent is a file) fails every writer with the same error.
    if (world().rank() == 0) fs::write_file_atomic(dir + "/blocked", {"not a directory\n"});
    world().barrier();
    try {
        ep.save_distributed(dir + "/blocked/model", {.dtype = at::kFloat}, /*write=*/true);
        ADD_FAILURE() << "saving under a file succeeded";
    } catch (const CheckpointError& e) {
        EXPECT_THAT(e.what(), ::testing::HasSubstr("writer rank 0"));
    }
    world().barrier();
    if (world().rank() == 0) fs::remove_tree(dir);
    EXPECT_THROW(ep.save(dir + "/x"), InternalError);  // a rank alone cannot write the whole model
}

TEST(ModelExpertParallelTest, GroupMustDivideTheExperts) {
    if (!under_mpi() || divides()) GTEST_SKIP() << "needs a group size that does not divide 8 (3 ranks)";
    Model m = make_model();
    EXPECT_THROW(m.set_expert_parallel({.group = &world()}), ConfigError);
}

}  // namespace
}  // namespace dsrl::dsa
