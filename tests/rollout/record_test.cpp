#include "rollout/record.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/equal.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <absl/strings/escaping.h>
#include <absl/strings/str_cat.h>
#include <c10/util/Exception.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <sstream>

#include "core/error.h"
#include "core/fs.h"
#include "core/rng.h"
#include "rollout/indexer_sets.h"
#include "tests/test_util.h"
#include "text/tokenizer.h"

namespace dsrl::rollout {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string read_bytes(const std::string& path) { return fs::read_file(path); }

void write_bytes(const std::string& path, const std::string& bytes) { fs::write_file_atomic(path, {bytes}); }

std::vector<std::string> list_dir(const std::string& dir) {
    return fs::is_dir(dir) ? fs::list_dir(dir) : std::vector<std::string>{};
}

// A random sorted subset of [0, vocab) of about `density` · vocab ids (at least one).
std::vector<int32_t> random_ids(std::mt19937_64& rng, int64_t vocab, double density) {
    std::vector<int32_t> ids;
    std::bernoulli_distribution keep(density);
    for (int64_t i = 0; i < vocab; ++i) {
        if (keep(rng)) ids.push_back(static_cast<int32_t>(i));
    }
    if (ids.empty()) ids.push_back(static_cast<int32_t>(rng() % vocab));
    return ids;
}

// The size of the smallest encoding of `ids`, computed independently of record.cpp.
size_t smallest_encoding(const std::vector<int32_t>& ids, int64_t vocab) {
    if (static_cast<int64_t>(ids.size()) == vocab) return 1;
    size_t varints = 1;
    int64_t prev = -1;
    for (const int32_t id : ids) {
        for (uint64_t d = id - prev;; d >>= 7) {
            ++varints;
            if (d < 0x80) break;
        }
        prev = id;
    }
    return std::min<size_t>(varints, 1 + (vocab + 7) / 8);
}

std::string kept_error(const std::string& bytes, int64_t vocab) {
    try {
        KeptSet::from_bytes(bytes, vocab);
    } catch (const DataError& e) {
        return e.what();
    }
    return "<accepted>";
}

// Random DSA key sets over `n` positions at k: each position keeps most of the previous set and swaps a few keys
// (what consecutive queries do), now and then a fresh random set. Row p < k: keys 0..p, then −1.
at::Tensor random_key_sets(std::mt19937_64& rng, int64_t n, int64_t k) {
    at::Tensor t = at::full({n, k}, -1, at::kInt);
    std::vector<int32_t> cur;
    for (int64_t p = 0; p < n; ++p) {
        if (p < k) {
            for (int64_t j = 0; j <= p; ++j) t[p][j] = static_cast<int32_t>(j);
            cur.push_back(static_cast<int32_t>(p));
            continue;
        }
        std::set<int32_t> next(cur.begin(), cur.end());
        const int changes = rng() % 7 == 0 ? static_cast<int>(k) : static_cast<int>(rng() % 3);
        for (int c = 0; c < changes; ++c) {
            next.erase(std::next(next.begin(), static_cast<std::ptrdiff_t>(rng() % next.size())));
            int32_t key;
            do key = static_cast<int32_t>(rng() % (p + 1));
            while (next.count(key));
            next.insert(key);
        }
        cur.assign(next.begin(), next.end());
        std::shuffle(cur.begin(), cur.end(), rng);  // any order in, sorted out
        for (int64_t j = 0; j < k; ++j) t[p][j] = cur[static_cast<size_t>(j)];
        std::sort(cur.begin(), cur.end());
    }
    return t;
}

// A sample with random contents: `n_experts` > 256 gives uint16 routes; `index_topk` > 0 adds key sets of 2 layers.
Sample random_sample(std::mt19937_64& rng,
                     int64_t vocab,
                     int64_t n_experts,
                     int layers,
                     int top_k,
                     int prompt_len,
                     int response_len,
                     int64_t index_topk = 0) {
    Sample s;
    s.domain = absl::StrCat("dom", rng() % 5, "\xE2\x88\x91");
    s.prompt_id = static_cast<int64_t>(rng() >> 1) - (int64_t{1} << 62);
    s.sample_index = static_cast<int32_t>(rng() % 8);
    s.seed = rng();
    s.policy_version = static_cast<int64_t>(rng() % 1000);
    for (int i = 0; i < prompt_len; ++i) s.prompt.push_back(static_cast<int32_t>(rng() % vocab));
    for (int i = 0; i < response_len; ++i) s.response.push_back(static_cast<int32_t>(rng() % vocab));
    s.finish = static_cast<FinishReason>(rng() % 4);
    s.vocab_size = vocab;
    std::uniform_real_distribution<float> lp(-12.0f, 0.0f);
    const double densities[] = {0.001, 0.02, 0.3, 0.9, 1.0};
    for (int i = 0; i < response_len; ++i) {
        s.logprobs.push_back(lp(rng));
        std::vector<int32_t> ids = random_ids(rng, vocab, densities[rng() % 5]);
        if (!std::binary_search(ids.begin(), ids.end(), s.response[i])) {
            ids.insert(std::lower_bound(ids.begin(), ids.end(), s.response[i]), s.response[i]);
        }
        s.kept.push_back(KeptSet::from_ids(ids, vocab));
    }
    at::Generator gen = rng::make_cpu_generator(rng());
    std::vector<at::Tensor> per_layer;
    for (int l = 0; l < layers; ++l) {
        per_layer.push_back(at::randint(n_experts, {s.num_tokens(), top_k}, gen, at::kLong));
    }
    s.set_routes(per_layer, n_experts);
    if (index_topk > 0)
        s.set_indexer(
            {random_key_sets(rng, s.num_tokens(), index_topk), random_key_sets(rng, s.num_tokens(), index_topk)},
            index_topk);
    s.reward = static_cast<float>(rng() % 3) - 1.0f;
    return s;
}

void expect_same_sample(const Sample& a, const Sample& b, const std::string& where) {
    SCOPED_TRACE(where);
    EXPECT_EQ(a.domain, b.domain);
    EXPECT_EQ(a.prompt_id, b.prompt_id);
    EXPECT_EQ(a.sample_index, b.sample_index);
    EXPECT_EQ(a.seed, b.seed);
    EXPECT_EQ(a.policy_version, b.policy_version);
    EXPECT_EQ(a.prompt, b.prompt);
    EXPECT_EQ(a.response, b.response);
    EXPECT_EQ(a.finish, b.finish);
    ASSERT_EQ(a.logprobs.size(), b.logprobs.size());
    for (size_t i = 0; i < a.logprobs.size(); ++i) {
        EXPECT_EQ(std::bit_cast<uint32_t>(a.logprobs[i]), std::bit_cast<uint32_t>(b.logprobs[i])) << i;
    }
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    ASSERT_EQ(a.kept.size(), b.kept.size());
    for (size_t i = 0; i < a.kept.size(); ++i) {
        EXPECT_EQ(a.kept[i].bytes(), b.kept[i].bytes()) << i;
        EXPECT_EQ(a.kept[i].vocab(), b.kept[i].vocab()) << i;
    }
    EXPECT_EQ(a.num_moe_layers, b.num_moe_layers);
    EXPECT_EQ(a.route_top_k, b.route_top_k);
    EXPECT_EQ(a.route_bytes, b.route_bytes);
    EXPECT_EQ(a.routes, b.routes);
    EXPECT_EQ(a.indexer_topk, b.indexer_topk);
    EXPECT_EQ(a.indexer, b.indexer);
}

void expect_same_groups(const std::vector<SampleGroup>& a, const std::vector<SampleGroup>& b) {
    ASSERT_EQ(a.size(), b.size());
    for (size_t g = 0; g < a.size(); ++g) {
        EXPECT_EQ(a[g].domain, b[g].domain);
        EXPECT_EQ(a[g].prompt_id, b[g].prompt_id);
        ASSERT_EQ(a[g].samples.size(), b[g].samples.size());
        for (size_t i = 0; i < a[g].samples.size(); ++i) {
            expect_same_sample(a[g].samples[i], b[g].samples[i], absl::StrCat("group ", g, " sample ", i));
        }
    }
}

// Several groups covering uint8 and uint16 routes, NaN and infinite rewards, an empty response, a sample
// without log-probs/kept sets/routes and an empty group.
std::vector<SampleGroup> example_groups(uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::vector<SampleGroup> groups(4);
    groups[0].domain = "math";
    groups[0].prompt_id = 17;
    for (int i = 0; i < 4; ++i) {
        groups[0].samples.push_back(random_sample(rng, 320, 64, 3, 2, 5 + i, 3 + 2 * i, /*index_topk=*/i % 2 ? 4 : 0));
        groups[0].samples.back().sample_index = i;
    }
    groups[0].samples[1].reward = std::numeric_limits<float>::quiet_NaN();
    groups[0].samples[2].reward = -std::numeric_limits<float>::infinity();
    groups[1].domain = "code";
    groups[1].prompt_id = -3;
    groups[1].samples.push_back(random_sample(rng, 4000, 300, 2, 8, 7, 9, 3));  // uint16 routes, key sets
    groups[1].samples.push_back(random_sample(rng, 4000, 300, 2, 8, 7, 0));     // empty response
    Sample bare;                                                                // nothing recorded beyond the tokens
    bare.prompt = {1, 2, 3};
    bare.response = {4};
    bare.finish = FinishReason::kStop;
    groups[1].samples.push_back(bare);
    groups[2].domain = "";
    groups[2].prompt_id = 0;  // no samples
    groups[3].domain = "tiny";
    groups[3].samples.push_back(random_sample(rng, 7, 2, 1, 1, 2, 4));  // vocab 7: every encoding is "all"/varints
    return groups;
}

// Recomputes the CRC trailer so a payload edit reaches the structural checks.
void reseal(std::string& bytes) {
    const size_t payload = bytes.size() - 24;
    const uint32_t crc = crc32(bytes.data() + 20, payload);
    for (int i = 0; i < 4; ++i) bytes[bytes.size() - 4 + i] = static_cast<char>(crc >> (8 * i));
}

std::string deserialize_error(const std::string& bytes, const std::string& what = "<buffer>") {
    try {
        deserialize_groups(bytes, what);
    } catch (const DataError& e) {
        return e.what();
    }
    return "<accepted>";
}

// ---- KeptSet ----------------------------------------------------------------------------------------------

TEST(KeptSetTest, FullVocabularyEncodesAsAll) {
    for (const int64_t vocab : {1, 9, 320}) {
        std::vector<int32_t> all(vocab);
        for (int64_t i = 0; i < vocab; ++i) all[i] = static_cast<int32_t>(i);
        const KeptSet k = KeptSet::from_ids(all, vocab);
        EXPECT_EQ(k.bytes(), std::string(1, '\0'));
        EXPECT_EQ(k.size(), vocab);
        EXPECT_EQ(k.vocab(), vocab);
        EXPECT_EQ(k.ids(), all);
        EXPECT_TRUE(k.contains(0));
        EXPECT_TRUE(k.contains(static_cast<int32_t>(vocab - 1)));
        EXPECT_FALSE(k.contains(static_cast<int32_t>(vocab)));
        EXPECT_FALSE(k.contains(-1));
        EXPECT_EQ(KeptSet::from_mask(at::ones({vocab}, at::kBool)).bytes(), k.bytes());
    }
}

TEST(KeptSetTest, SparseSetsEncodeAsDeltaVarints) {
    // Deltas from -1: 4, 497, 499 -> 0x04, 0xF1 0x03, 0xF3 0x03.
    const KeptSet k = KeptSet::from_ids({3, 500, 999}, 1000);
    EXPECT_EQ(k.bytes(), std::string("\x01\x04\xF1\x03\xF3\x03", 6));
    EXPECT_EQ(k.size(), 3);
    EXPECT_EQ(k.ids(), (std::vector<int32_t>{3, 500, 999}));
    EXPECT_TRUE(k.contains(500));
    EXPECT_FALSE(k.contains(501));
    EXPECT_FALSE(k.contains(2));
    // Id 0 is a delta of 1 from -1.
    EXPECT_EQ(KeptSet::from_ids({0}, 320).bytes(), std::string("\x01\x01", 2));
    // A tie with the bitmap (vocab 16: 1 + 2 bytes either way) goes to varints.
    EXPECT_EQ(KeptSet::from_ids({1, 2}, 16).bytes(), std::string("\x01\x02\x01", 3));
}

TEST(KeptSetTest, DenseSetsEncodeAsLsbFirstBitmap) {
    std::vector<int32_t> even;
    for (int32_t i = 0; i < 20; i += 2) even.push_back(i);
    const KeptSet k = KeptSet::from_ids(even, 20);
    EXPECT_EQ(k.bytes(), std::string("\x02\x55\x55\x05", 4));
    EXPECT_EQ(k.size(), 10);
    EXPECT_EQ(k.ids(), even);
    EXPECT_TRUE(k.contains(18));
    EXPECT_FALSE(k.contains(19));
    EXPECT_FALSE(k.contains(20));
    EXPECT_EQ(KeptSet::from_ids({1, 2, 3}, 16).bytes(), std::string("\x02\x0E\x00", 3));
}

TEST(KeptSetTest, RandomSetsRoundTripThroughIdsMaskAndBytes) {
    std::mt19937_64 rng(11);
    int seen[3] = {0, 0, 0};
    for (const int64_t vocab : {1, 2, 7, 8, 9, 63, 320, 5000, 129280}) {
        for (const double density : {0.0, 0.0005, 0.01, 0.1, 0.5, 0.97, 1.0}) {
            const std::vector<int32_t> ids = random_ids(rng, vocab, density);
            const KeptSet k = KeptSet::from_ids(ids, vocab);
            SCOPED_TRACE(absl::StrCat("vocab ", vocab, " density ", density, " n ", ids.size()));
            ++seen[static_cast<uint8_t>(k.bytes()[0])];
            EXPECT_EQ(k.bytes().size(), smallest_encoding(ids, vocab));
            EXPECT_EQ(k.ids(), ids);
            EXPECT_EQ(k.size(), static_cast<int64_t>(ids.size()));
            at::Tensor mask = at::zeros({vocab}, at::kBool);
            auto m = mask.accessor<bool, 1>();
            for (const int32_t id : ids) m[id] = true;
            EXPECT_EQ(KeptSet::from_mask(mask).bytes(), k.bytes());
            // The engine's path: bits packed (on the device), then decoded on the host.
            const at::Tensor bits = pack_mask_bits(mask.unsqueeze(0)).contiguous();
            ASSERT_EQ(bits.size(1), (vocab + 7) / 8);
            EXPECT_EQ(KeptSet::from_bitmap(bits.data_ptr<uint8_t>(), vocab).bytes(), k.bytes());
            // fill_mask writes into a strided row of a bigger tensor.
            at::Tensor rows = at::ones({vocab, 3}, at::kBool);
            k.fill_mask(rows.select(1, 1));
            EXPECT_TRUE(at::equal(rows.select(1, 1), mask));
            EXPECT_TRUE(rows.select(1, 0).all().item<bool>());
            const KeptSet back = KeptSet::from_bytes(k.bytes(), vocab);
            EXPECT_EQ(back.ids(), ids);
            if (vocab <= 5000) {
                for (int32_t id = -1; id <= vocab; ++id) {
                    ASSERT_EQ(k.contains(id), id >= 0 && id < vocab && m[id]) << id;
                }
            }
        }
    }
    EXPECT_GT(seen[0], 0);
    EXPECT_GT(seen[1], 0);
    EXPECT_GT(seen[2], 0);
}

TEST(KeptSetTest, EmptyUnsortedOrOutOfRangeIdsAreRejected) {
    EXPECT_THROW(KeptSet::from_ids({}, 320), c10::Error);
    EXPECT_THROW(KeptSet::from_ids({5, 3}, 320), c10::Error);
    EXPECT_THROW(KeptSet::from_ids({3, 3}, 320), c10::Error);
    EXPECT_THROW(KeptSet::from_ids({-1}, 320), c10::Error);
    EXPECT_THROW(KeptSet::from_ids({320}, 320), c10::Error);
    EXPECT_THROW(KeptSet::from_ids({0}, 0), c10::Error);
    EXPECT_THROW(KeptSet::from_mask(at::zeros({320}, at::kBool)), c10::Error);
    EXPECT_THROW(KeptSet::from_mask(at::ones({320}, at::kFloat)), c10::Error);
    EXPECT_THROW(KeptSet::from_mask(at::ones({2, 4}, at::kBool)), c10::Error);
    const KeptSet k = KeptSet::from_ids({1}, 10);
    EXPECT_THROW(k.fill_mask(at::zeros({11}, at::kBool)), c10::Error);
    EXPECT_THROW(k.fill_mask(at::zeros({10}, at::kFloat)), c10::Error);
    const KeptSet none;
    EXPECT_EQ(none.size(), 0);
    EXPECT_TRUE(none.ids().empty());
    EXPECT_FALSE(none.contains(0));
}

TEST(KeptSetTest, MalformedBytesAreRejected) {
    const std::string max_varint("\x01\xFF\xFF\xFF\xFF\x0F", 6);  // a 5-byte delta of 2^32 - 1
    const struct {
        std::string bytes;
        int64_t vocab;
        const char* error;
    } cases[] = {
        {"", 10, "empty encoding"},
        {std::string("\x07", 1), 10, "unknown encoding tag 7"},
        {std::string("\x03\x01", 2), 10, "unknown encoding tag 3"},
        {std::string("\x00\x01", 2), 10, "takes no payload"},
        {std::string("\x01", 1), 10, "never empty"},
        {std::string("\x01\x80", 2), 10, "truncated varint"},
        {std::string("\x01\x01\x00", 3), 10, "zero delta"},
        {std::string("\x01\x0B", 2), 10, "outside the vocabulary"},
        {std::string("\x01\x05\x06", 3), 10, "outside the vocabulary"},
        {std::string("\x01\x80\x80\x80\x80\x80\x01", 7), 10, "longer than 5 bytes"},
        {max_varint, 10, "outside the vocabulary"},
        {std::string("\x02\x01", 2), 10, "needs 2 bytes, got 1"},
        {std::string("\x02\x01\x00\x00", 4), 10, "needs 2 bytes, got 3"},
        {std::string("\x02\x00\x04", 3), 10, "beyond the vocabulary"},
        {std::string("\x02\x00\x00", 3), 10, "empty bitmap"},
        {std::string("\x00", 1), 0, "vocabulary size 0"},
        {std::string("\x00", 1), -5, "vocabulary size -5"},
    };
    for (const auto& c : cases) {
        EXPECT_THAT(kept_error(c.bytes, c.vocab), HasSubstr(c.error)) << absl::CHexEscape(c.bytes);
    }
    // Valid but non-minimal encodings are accepted and read as written.
    EXPECT_EQ(KeptSet::from_bytes(std::string("\x02\x03\x00", 3), 10).ids(), (std::vector<int32_t>{0, 1}));
    EXPECT_EQ(KeptSet::from_bytes(std::string("\x01\x01\x01", 3), 2).size(), 2);
}

// ---- Records ----------------------------------------------------------------------------------------------

TEST(RecordTest, Crc32MatchesZlib) {
    const auto crc = [](const std::string& s) { return crc32(s.data(), s.size()); };
    EXPECT_EQ(crc("123456789"), 0xCBF43926u);
    EXPECT_EQ(crc(""), 0u);
    EXPECT_EQ(crc("a"), 0xE8B7BE43u);
    EXPECT_EQ(crc("The quick brown fox jumps over the lazy dog"), 0x414FA339u);
    EXPECT_EQ(crc(std::string(32, '\0')), 0x190A55ADu);
    std::string all;
    for (int b = 0; b < 256; ++b) all.push_back(static_cast<char>(b));
    EXPECT_EQ(crc(all), 0x29058C73u);
}

TEST(RecordTest, GroupsRoundTripWithRandomContents) {
    const std::vector<SampleGroup> groups = example_groups(5);
    EXPECT_EQ(groups[0].samples[0].route_bytes, 1);
    EXPECT_EQ(groups[1].samples[0].route_bytes, 2);
    const std::string bytes = serialize_groups(groups);
    EXPECT_EQ(bytes.substr(0, 8), "DSRLROLL");
    const std::vector<SampleGroup> back = deserialize_groups(bytes);
    expect_same_groups(back, groups);
    EXPECT_TRUE(std::isnan(back[0].samples[1].reward));
    EXPECT_EQ(serialize_groups(back), bytes);
    for (const auto& [g, i] : {std::pair{0, 2}, std::pair{1, 0}}) {
        const Sample& s = groups[g].samples[i];
        ASSERT_GT(s.num_moe_layers, 0);
        for (int32_t l = 0; l < s.num_moe_layers; ++l) {
            EXPECT_TRUE(at::equal(back[g].samples[i].route_tensor(l), s.route_tensor(l))) << g << " " << i << " " << l;
        }
    }
    EXPECT_TRUE(deserialize_groups(serialize_groups({})).empty());
}

TEST(RecordTest, RoutesRoundTripAsUint8AndUint16) {
    at::Generator gen = rng::make_cpu_generator(6);
    for (const int64_t n_experts : {1, 256, 257, 65536}) {
        Sample s;
        s.prompt = {1, 2};
        s.response = {3, 4, 5};
        const at::Tensor a = at::randint(n_experts, {5, 3}, gen, at::kLong);
        at::Tensor b = at::randint(n_experts, {5, 3}, gen, at::kInt);
        b[4][2] = n_experts - 1;
        s.set_routes({a, b}, n_experts);
        EXPECT_EQ(s.route_bytes, n_experts <= 256 ? 1 : 2);
        EXPECT_EQ(s.num_moe_layers, 2);
        EXPECT_EQ(s.route_top_k, 3);
        EXPECT_EQ(s.routes.size(), 2u * 5 * 3 * s.route_bytes);
        const Sample back = deserialize_groups(serialize_groups({SampleGroup{"d", 1, {s}}}))[0].samples[0];
        EXPECT_TRUE(at::equal(back.route_tensor(0), a));
        EXPECT_TRUE(at::equal(back.route_tensor(1), b.to(at::kLong)));
        EXPECT_EQ(back.route_tensor(1)[4][2].item<int64_t>(), n_experts - 1);
    }
    // Little-endian uint16.
    Sample s;
    s.prompt = {7};
    s.set_routes({at::full({1, 1}, 0x1234, at::kLong)}, 65536);
    EXPECT_EQ(s.routes, (std::vector<uint8_t>{0x34, 0x12}));
    s.set_routes({}, 64);
    EXPECT_EQ(s.num_moe_layers, 0);
    EXPECT_TRUE(s.routes.empty());
}

TEST(RecordTest, SetRoutesChecksShapesAndExpertIds) {
    Sample s;
    s.prompt = {1, 2};
    s.response = {3};
    EXPECT_THROW(s.set_routes({at::zeros({2, 2}, at::kLong)}, 8), c10::Error);  // 2 != 3 tokens
    EXPECT_THROW(s.set_routes({at::zeros({3, 2}, at::kLong), at::zeros({3, 1}, at::kLong)}, 8), c10::Error);
    EXPECT_THROW(s.set_routes({at::zeros({3}, at::kLong)}, 8), c10::Error);
    EXPECT_THROW(s.set_routes({at::zeros({3, 2}, at::kFloat)}, 8), c10::Error);
    EXPECT_THROW(s.set_routes({at::full({3, 2}, 8, at::kLong)}, 8), c10::Error);
    EXPECT_THROW(s.set_routes({at::full({3, 2}, -1, at::kLong)}, 8), c10::Error);
    EXPECT_THROW(s.set_routes({at::zeros({3, 2}, at::kLong)}, 65537), c10::Error);
    try {
        s.set_routes({at::zeros({3, 2}, at::kLong), at::full({3, 2}, 9, at::kLong)}, 8);
        FAIL() << "expected an error";
    } catch (const c10::Error& e) {
        EXPECT_THAT(e.what(), HasSubstr("layer 1 token 0 slot 0: expert id 9 is outside [0, 8)"));
    }
    EXPECT_EQ(s.num_moe_layers, 0);  // a failed call leaves the sample unchanged
    s.set_routes({at::zeros({3, 2}, at::kLong)}, 8);
    EXPECT_THROW(s.route_tensor(1), c10::Error);
    EXPECT_THROW(s.route_tensor(-1), c10::Error);
}

TEST(RecordTest, SerializeRejectsInconsistentSamples) {
    std::mt19937_64 rng(2);
    const Sample good = random_sample(rng, 320, 8, 1, 2, 3, 4);
    const auto error = [](const Sample& s) {
        try {
            serialize_groups({SampleGroup{"d", 0, {Sample(), s}}});
        } catch (const DataError& e) {
            return std::string(e.what());
        }
        return std::string("<accepted>");
    };
    EXPECT_EQ(error(good), "<accepted>");
    Sample s = good;
    s.logprobs.pop_back();
    EXPECT_THAT(error(s), HasSubstr("serialize_groups: group 0 sample 1: 3 log-probs for 4 response tokens"));
    s = good;
    s.kept.pop_back();
    EXPECT_THAT(error(s), HasSubstr("3 kept sets for 4 response tokens"));
    s = good;
    s.kept[1] = KeptSet::from_ids({1}, 321);
    EXPECT_THAT(error(s), HasSubstr("kept set of response token 1"));
    s = good;
    s.response[2] = 320;
    EXPECT_THAT(error(s), HasSubstr("response token 2 has id 320 outside the vocabulary [0, 320)"));
    s = good;
    s.prompt[0] = -4;
    EXPECT_THAT(error(s), HasSubstr("prompt token 0 has id -4"));
    s = good;
    s.routes.pop_back();
    EXPECT_THAT(error(s), HasSubstr("routes hold"));
    s = good;
    s.route_bytes = 3;
    EXPECT_THAT(error(s), HasSubstr("route_bytes 3"));
    s = good;
    s.finish = static_cast<FinishReason>(7);
    EXPECT_THAT(error(s), HasSubstr("finish reason 7"));
}

TEST(RecordTest, FileRoundTripIsAtomic) {
    testing::TempDir dir;
    const std::string path = dir.path() + "/rollouts.bin";
    const std::vector<SampleGroup> first = example_groups(1);
    write_groups_file(path, first);
    expect_same_groups(read_groups_file(path), first);
    const std::vector<SampleGroup> second = example_groups(2);
    write_groups_file(path, second);  // replaces the file
    expect_same_groups(read_groups_file(path), second);
    EXPECT_EQ(read_bytes(path), serialize_groups(second));
    EXPECT_EQ(list_dir(dir.path()), std::vector<std::string>{"rollouts.bin"});  // no temporary left behind
    try {
        read_groups_file(path + ".missing");
        FAIL() << "expected a DataError";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr(path + ".missing: cannot open"));
    }
    EXPECT_THROW(write_groups_file(dir.path() + "/no/such/dir/x.bin", first), DataError);
    // A corrupt file names the path.
    std::string bytes = read_bytes(path);
    bytes[bytes.size() / 2] ^= 0x10;
    write_bytes(path, bytes);
    try {
        read_groups_file(path);
        FAIL() << "expected a DataError";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr(path + ": checksum mismatch"));
    }
}

// Every single-byte change of a small file is reported, each by the check that owns the changed field.
TEST(RecordTest, EverySingleByteCorruptionIsDetected) {
    std::mt19937_64 rng(9);
    const std::string bytes = serialize_groups({SampleGroup{"m", 4, {random_sample(rng, 300, 300, 1, 2, 2, 3)}}});
    ASSERT_LT(bytes.size(), 600u);
    for (size_t pos = 0; pos < bytes.size(); ++pos) {
        for (const int flip : {0x01, 0x80, 0xFF, 0x5A}) {
            std::string bad = bytes;
            bad[pos] = static_cast<char>(bad[pos] ^ flip);
            const std::string error = deserialize_error(bad, "peer 3");
            SCOPED_TRACE(absl::StrCat("byte ", pos, " ^ ", flip, ": ", error));
            ASSERT_THAT(error, HasSubstr("peer 3: "));
            if (pos < 8) {
                EXPECT_THAT(error, HasSubstr("bad magic"));
            } else if (pos < 12) {
                // Another version: a newer (or 0) one is refused as such; an older one misreads the payload.
                const uint32_t v = pos == 8 ? (3u ^ static_cast<uint32_t>(flip)) : 3u;
                if (v == 1 || v == 2) {
                    EXPECT_FALSE(error.empty());
                } else {
                    EXPECT_THAT(error, HasSubstr("version"));
                }
            } else if (pos < 20) {
                EXPECT_THAT(error, ::testing::AnyOf(HasSubstr("truncated"), HasSubstr("unexpected bytes")));
            } else {
                EXPECT_THAT(error, HasSubstr("checksum mismatch"));
            }
        }
    }
}

TEST(RecordTest, TruncationAtEveryLengthIsDetected) {
    std::mt19937_64 rng(4);
    const std::string bytes = serialize_groups({SampleGroup{"m", 4, {random_sample(rng, 320, 16, 2, 2, 3, 5)}}});
    for (size_t n = 0; n < bytes.size(); ++n) {
        const std::string error = deserialize_error(bytes.substr(0, n));
        EXPECT_THAT(error, HasSubstr("truncated")) << n;
    }
    EXPECT_THAT(deserialize_error(bytes + "x"), HasSubstr("1 unexpected bytes after the checksum"));
}

TEST(RecordTest, WrongMagicOrNewerVersionIsRejected) {
    const std::string bytes = serialize_groups(example_groups(3));
    std::string bad = bytes;
    bad.replace(0, 8, "SAFETENS");
    EXPECT_THAT(deserialize_error(bad, "f.bin"), HasSubstr("f.bin: bad magic \"SAFETENS\""));
    bad = bytes;
    bad[8] = 4;
    EXPECT_THAT(deserialize_error(bad), HasSubstr("<buffer>: format version 4 is newer than the supported version 3"));
    bad[8] = 0;
    EXPECT_THAT(deserialize_error(bad), HasSubstr("format version 0"));
    EXPECT_THAT(deserialize_error("DSRL"), HasSubstr("truncated: 4 bytes"));
    EXPECT_THAT(deserialize_error(""), HasSubstr("truncated: 0 bytes"));
}

// Structural checks behind a valid checksum: what a buggy writer could produce.
TEST(RecordTest, StructuralErrorsBehindAValidChecksumAreReported) {
    Sample s;
    s.domain = "d";
    s.prompt = {16, 17};
    s.response = {18};
    s.logprobs = {-0.5f};
    s.vocab_size = 320;
    s.kept = {KeptSet::from_ids({18}, 320)};
    s.set_routes({at::zeros({3, 1}, at::kLong)}, 4);
    const std::string bytes = serialize_groups({SampleGroup{"g", 1, {s}}});
    // Offsets inside the file (header 20 bytes): groups count at 20, then group: domain (8 + 1), prompt_id (8),
    // sample count (8), then the sample.
    const size_t group_count = 20, sample_count = 20 + 8 + 9 + 8, sample = sample_count + 8;
    const size_t finish = sample + 9 + 8 + 4 + 8 + 8 + (8 + 8) + (8 + 4);
    const size_t kept_tag = finish + 1 + (8 + 4) + 8 + 8 + 8;
    ASSERT_EQ(static_cast<uint8_t>(bytes[kept_tag]), 1);  // the layout assumed above

    const auto edited = [&](size_t pos, const std::string& value) {
        std::string b = bytes;
        b.replace(pos, value.size(), value);
        reseal(b);
        return deserialize_error(b, "r.bin");
    };
    EXPECT_THAT(edited(group_count, std::string("\xFF\xFF\xFF\xFF\xFF\xFF\xFF\x7F", 8)),
                HasSubstr("r.bin: truncated or corrupt: group count claims 9223372036854775807 entries"));
    EXPECT_THAT(edited(sample_count, std::string("\x02", 1)), HasSubstr("r.bin: group 0 sample 1: truncated"));
    EXPECT_THAT(edited(finish, std::string("\x09", 1)), HasSubstr("r.bin: group 0 sample 0: finish reason 9"));
    EXPECT_THAT(edited(kept_tag, std::string("\x05", 1)),
                HasSubstr("r.bin: group 0 sample 0: response token 0: kept set: unknown encoding tag 5"));
    EXPECT_THAT(edited(kept_tag + 1, std::string("\x00", 1)), HasSubstr("response token 0: kept set: zero delta"));
    // Trailing bytes inside the payload.
    std::string b = bytes;
    b.insert(b.size() - 4, "zz");
    uint64_t payload = b.size() - 24;
    for (int i = 0; i < 8; ++i) b[12 + i] = static_cast<char>(payload >> (8 * i));
    reseal(b);
    EXPECT_THAT(deserialize_error(b), HasSubstr("2 unparsed bytes at the end of the payload"));
}

// Random edits behind a recomputed checksum either parse or raise DataError; nothing else escapes.
TEST(RecordTest, ResealedMutationsNeverCrash) {
    const std::string bytes = serialize_groups(example_groups(8));
    std::mt19937_64 rng(8);
    int accepted = 0, rejected = 0;
    for (int iter = 0; iter < 3000; ++iter) {
        std::string b = bytes;
        const int edits = 1 + static_cast<int>(rng() % 3);
        for (int e = 0; e < edits; ++e) b[20 + rng() % (b.size() - 24)] = static_cast<char>(rng() % 256);
        reseal(b);
        try {
            const auto groups = deserialize_groups(b);
            ++accepted;
            for (const auto& g : groups) {
                for (const auto& s : g.samples) {
                    for (const auto& k : s.kept) EXPECT_GT(k.size(), 0);
                    for (int32_t l = 0; l < s.num_moe_layers; ++l) s.route_tensor(l);
                }
            }
        } catch (const DataError&) {
            ++rejected;
        }
    }
    EXPECT_GT(rejected, 0);
    std::cout << "[resealed mutations] accepted " << accepted << ", rejected " << rejected << "\n";
}

// dsrl_tool rollouts prints a file, and fails with the reader's message on a corrupt one. The tool is
// $DSRL_TOOL, or else the dsrl_tool next to this test binary (both live in build/bin).
std::string tool_path() {
    if (const char* env = std::getenv("DSRL_TOOL"); env != nullptr && *env != '\0') return env;
    char buf[4096];
    const ssize_t n = readlink("/proc/self/exe", buf, sizeof(buf) - 1);
    if (n <= 0) return "";
    std::string self(buf, static_cast<size_t>(n));
    return self.substr(0, self.find_last_of('/') + 1) + "dsrl_tool";
}

TEST(RecordTest, DsrlToolPrintsAFile) {
    const std::string tool_str = tool_path();
    const char* tool = tool_str.c_str();
    ASSERT_TRUE(::access(tool, X_OK) == 0)
        << "no dsrl_tool at '" << tool_str << "' (build it, or set DSRL_TOOL=build/bin/dsrl_tool)";
    testing::TempDir dir;
    const text::ByteTokenizer tok(320);
    Sample s;
    s.domain = "math";
    s.prompt_id = 42;
    s.policy_version = 7;
    for (const int64_t id : tok.apply_chat({{"user", "2+3?"}}, true)) s.prompt.push_back(static_cast<int32_t>(id));
    for (const int64_t id : tok.encode("5\n")) s.response.push_back(static_cast<int32_t>(id));
    s.response.push_back(text::ByteTokenizer::kEos);
    s.finish = FinishReason::kEos;
    s.vocab_size = 320;
    s.logprobs = {-0.25f, -0.5f, -0.75f};
    s.kept = {KeptSet::from_ids({16 + '5', 16 + '6'}, 320), KeptSet::from_ids({16 + '\n'}, 320),
              KeptSet::from_ids({1, 2, 3}, 320)};
    std::vector<at::Tensor> routes;
    for (int l = 0; l < 2; ++l) {
        routes.push_back(at::arange(s.num_tokens() * 2, at::kLong).view({-1, 2}).remainder(5).add(l * 10));
    }
    s.set_routes(routes, 64);
    s.reward = 1.0f;
    SampleGroup group{"math", 42, {s, s}};
    group.samples[1].sample_index = 1;
    group.samples[1].reward = std::numeric_limits<float>::quiet_NaN();
    const std::string path = dir.path() + "/r.bin";
    write_groups_file(path, {group, SampleGroup{"code", 43, {}}});

    const auto run = [&](const std::string& args, int* status) {
        const std::string cmd = absl::StrCat("'", tool, "' rollouts '", path, "' ", args, " 2>'", dir.path(), "/err'");
        FILE* pipe = ::popen(cmd.c_str(), "r");
        std::string out;
        char buf[4096];
        while (size_t n = std::fread(buf, 1, sizeof(buf), pipe)) out.append(buf, n);
        *status = ::pclose(pipe);
        return out;
    };
    int status = 0;
    std::string out = run("--tokens", &status);
    ASSERT_EQ(status, 0) << out << read_bytes(dir.path() + "/err");
    EXPECT_THAT(out, HasSubstr("2 groups, 2 samples"));
    EXPECT_THAT(out, HasSubstr("group 0: domain 'math', prompt id 42, G 2"));
    EXPECT_THAT(out, HasSubstr("group 1: domain 'code', prompt id 43, G 0"));
    EXPECT_THAT(out, HasSubstr("sample 0: finish eos, policy version 7, prompt 9 tokens, response 3 tokens, reward 1"));
    EXPECT_THAT(out, HasSubstr("sample 1: finish eos"));
    EXPECT_THAT(out, HasSubstr("reward nan"));
    EXPECT_THAT(out, HasSubstr("text: \"5\\n\""));
    EXPECT_THAT(out, HasSubstr("log-prob mean -0.5000"));
    EXPECT_THAT(out, HasSubstr("kept sets: size mean 2.0, max 3 (of 320), 3.00 bytes/token"));
    EXPECT_THAT(out, HasSubstr("routes: 2 layers x top-2, 4.00 bytes/token"));
    // Token 0 sits at position 9: routes (18, 19) % 5 = [3 4], +10 in layer 1.
    EXPECT_THAT(out, HasSubstr("token    0: id     69 '5' log-prob -0.2500 kept 2 routes [3 4] [13 14]"));
    EXPECT_THAT(out, HasSubstr("token    1: id     26 '\\x0A' log-prob -0.5000 kept 1"));
    EXPECT_THAT(out, HasSubstr("token    2: id      1 '<eos>' log-prob -0.7500 kept 3"));

    out = run("--max-groups 1", &status);
    ASSERT_EQ(status, 0);
    EXPECT_THAT(out, HasSubstr("group 0"));
    EXPECT_THAT(out, Not(HasSubstr("group 1:")));
    EXPECT_THAT(out, Not(HasSubstr("token    0")));
    EXPECT_THAT(out, HasSubstr("1 more groups not shown"));

    run("--max-groups x", &status);
    EXPECT_NE(status, 0);
    EXPECT_THAT(read_bytes(dir.path() + "/err"), HasSubstr("--max-groups"));

    std::string bytes = read_bytes(path);
    bytes[40] ^= 0x01;
    write_bytes(path, bytes);
    out = run("", &status);
    EXPECT_NE(status, 0);
    EXPECT_THAT(read_bytes(dir.path() + "/err"), HasSubstr("checksum"));
    EXPECT_THAT(read_bytes(dir.path() + "/err"), HasSubstr(path));
}

// ---- Indexer sets (keep-indexer) ------------------------------------------------------------------------

std::string indexer_error(const std::string& bytes, int64_t n, int64_t k) {
    try {
        decode_indexer_layer(bytes, n, k, "s");
    } catch (const DataError& e) {
        return e.what();
    }
    return "<accepted>";
}

TEST(IndexerSetsTest, RandomSelectionsRoundTripSortedWithImplicitEarlyPositions) {
    std::mt19937_64 rng(5);
    for (const int64_t k : {1, 3, 16}) {
        for (const int64_t n : {int64_t{0}, k - 1, k, k + 1, 5 * k + 7}) {
            const at::Tensor sets = random_key_sets(rng, n, k);
            const std::string bytes = encode_indexer_layer(sets, k);
            const at::Tensor back = decode_indexer_layer(bytes, n, k, "s");
            ASSERT_EQ(back.sizes(), at::IntArrayRef({n, k}));
            EXPECT_EQ(back.scalar_type(), at::kInt);
            for (int64_t p = 0; p < n; ++p) {
                at::Tensor want = std::get<0>(sets[p].sort());
                if (p < k) want = at::cat({at::arange(p + 1, at::kInt), at::full({k - p - 1}, -1, at::kInt)});
                EXPECT_TRUE(at::equal(back[p], want.to(at::kInt))) << "k " << k << " position " << p;
            }
            if (n <= k) {
                EXPECT_TRUE(bytes.empty()) << "positions before the sparse regime are implicit";
            }
        }
    }
}

TEST(IndexerSetsTest, SlidingSelectionsCostAFewBytesAndRandomOnesFallBackToRaw) {
    // A window of the k most recent keys: each position drops one key and adds itself.
    const int64_t k = 64, n = 1000;
    at::Tensor window = at::full({n, k}, -1, at::kInt);
    for (int64_t p = 0; p < n; ++p) {
        const int64_t first = std::max<int64_t>(0, p - k + 1);
        window[p].narrow(0, 0, p - first + 1).copy_(at::arange(first, p + 1, at::kInt));
    }
    const std::string slide = encode_indexer_layer(window, k);
    EXPECT_LE(slide.size(), static_cast<size_t>(5 * (n - k))) << "header + removed + added gaps";
    // Unrelated sets: the raw coding (header + k gaps) bounds the size.
    std::mt19937_64 rng(9);
    at::Tensor fresh = at::full({n, k}, -1, at::kInt);
    for (int64_t p = k; p < n; ++p) {
        std::vector<int32_t> keys(static_cast<size_t>(p + 1));
        std::iota(keys.begin(), keys.end(), 0);
        std::shuffle(keys.begin(), keys.end(), rng);
        for (int64_t j = 0; j < k; ++j) fresh[p][j] = keys[static_cast<size_t>(j)];
    }
    const std::string raw = encode_indexer_layer(fresh, k);
    EXPECT_LE(raw.size(), static_cast<size_t>((n - k) * (1 + 2 * k)));
    EXPECT_TRUE(at::equal(decode_indexer_layer(raw, n, k, "s").narrow(0, k, n - k),
                          std::get<0>(fresh.narrow(0, k, n - k).sort(1))));
    EXPECT_GT(raw.size(), static_cast<size_t>((n - k) * k / 2)) << "unrelated sets cost about k gaps each";
    // 4-byte keys of every sparse position would be far larger.
    EXPECT_GT(static_cast<double>((n - k) * k * 4) / static_cast<double>(slide.size()), 50.0);
}

TEST(IndexerSetsTest, EncoderRejectsSetsThatAreNotKDistinctEarlierKeys) {
    const int64_t k = 2;
    at::Tensor sets = at::tensor({0, -1, 0, 1, 0, 1}, at::kInt).view({3, 2});
    EXPECT_NO_THROW(encode_indexer_layer(sets, k));
    sets[2][1] = 3;  // after position 2
    EXPECT_THROW(encode_indexer_layer(sets, k), c10::Error);
    sets[2][1] = 0;  // repeated
    EXPECT_THROW(encode_indexer_layer(sets, k), c10::Error);
    sets[2][1] = -1;  // too few
    EXPECT_THROW(encode_indexer_layer(sets, k), c10::Error);
}

TEST(IndexerSetsTest, MalformedEncodingsAreDataErrorsNamingThePosition) {
    // k = 2, positions 0..3: positions 2 and 3 are coded.
    const at::Tensor sets = at::tensor({0, -1, 0, 1, 0, 2, 2, 3}, at::kInt).view({4, 2});
    const std::string good = encode_indexer_layer(sets, 2);
    ASSERT_EQ(indexer_error(good, 4, 2), "<accepted>");
    EXPECT_THAT(indexer_error(good.substr(0, good.size() - 1), 4, 2), HasSubstr("truncated varint"));
    EXPECT_THAT(indexer_error(good + std::string(1, '\x02'), 4, 2), HasSubstr("1 trailing bytes"));
    EXPECT_THAT(indexer_error(std::string("\x03", 1), 3, 2), HasSubstr("s: indexer set of position 2: header 3"));
    EXPECT_THAT(indexer_error(std::string("\x01\x01\x00", 3), 3, 2), HasSubstr("zero gap"));
    EXPECT_THAT(indexer_error(std::string("\x01\x01\x03", 3), 3, 2), HasSubstr("key 3 is after the position"));
    // Delta of 1: remove key 2 (not selected: the implicit set is {0, 1}), add key 2.
    EXPECT_THAT(indexer_error(std::string("\x02\x03\x03", 3), 3, 2), HasSubstr("removed key 2 was not selected"));
    // Delta of 1: remove key 0, add key 1 (already selected).
    EXPECT_THAT(indexer_error(std::string("\x02\x01\x02", 3), 3, 2), HasSubstr("added key 1 was already selected"));
    EXPECT_THAT(indexer_error(std::string("\x80\x80\x80\x80\x80\x01", 6), 3, 2), HasSubstr("longer than 5 bytes"));
    EXPECT_THAT(indexer_error("", 3, 0), HasSubstr("not a valid shape"));
    // Inside a record: the reader names the group, sample and layer.
    std::mt19937_64 rng(3);
    std::vector<SampleGroup> groups(1);
    groups[0].samples.push_back(random_sample(rng, 50, 8, 1, 2, 6, 6, /*index_topk=*/3));
    groups[0].samples[0].indexer[1] = std::string("\x05", 1);
    try {
        serialize_groups(groups);
        ADD_FAILURE() << "a malformed indexer record was written";
    } catch (const DataError& e) {
        EXPECT_THAT(e.what(), HasSubstr("group 0 sample 0: layer 1: indexer set of position 3: header 5"));
    }
    groups[0].samples[0].indexer_topk = 0;
    EXPECT_THROW(serialize_groups(groups), DataError);
}

// An older payload: the current one without the fields later versions added before the reward — version 3's
// multi-turn fields (u64 loss_mask count 0, 3 x i32 counts, u64 env_error length 0, u64 trajectory length 0: 36
// bytes) and, for version 1, version 2's keep-indexer fields (i32 indexer_topk 0, u64 count 0: 12 bytes).
std::string older_record(const std::vector<SampleGroup>& groups, int version) {
    const std::string v3 = serialize_groups(groups);
    const size_t cut = version == 2 ? 36 : 48;
    const size_t payload = v3.size() - 24;
    // ... routes, [i32 indexer_topk, u64 count], [multi-turn fields], f32 reward, then the CRC.
    std::string old = v3.substr(0, v3.size() - 4 - 4 - cut) + v3.substr(v3.size() - 8, 4);
    old[8] = static_cast<char>(version);
    const uint64_t p = payload - cut;
    for (int i = 0; i < 8; ++i) old[12 + i] = static_cast<char>(p >> (8 * i));
    old += std::string(4, '\0');
    reseal(old);
    return old;
}

TEST(IndexerSetsTest, Version1And2RecordsStillRead) {
    std::mt19937_64 rng(4);
    std::vector<SampleGroup> groups(1);
    groups[0].domain = "d";
    groups[0].samples.push_back(random_sample(rng, 50, 8, 1, 2, 4, 3));
    expect_same_groups(deserialize_groups(older_record(groups, 1), "v1.bin"), groups);
    expect_same_groups(deserialize_groups(older_record(groups, 2), "v2.bin"), groups);
}

}  // namespace
}  // namespace dsrl::rollout
