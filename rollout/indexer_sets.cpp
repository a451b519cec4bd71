#include "rollout/indexer_sets.h"

#include <ATen/ops/empty.h>
#include <absl/strings/str_cat.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "core/error.h"
#include "rollout/varint.h"

// Note [Indexer-set encoding]
// Per layer (one string each); positions p = k … N − 1; per position one header varint h, then:
//   h = 1       raw: the k keys ascending as varint gaps (the first from −1, so every gap is >= 1);
//   h = 2·d     delta against the previous set P: the d keys of P no longer selected, then the d keys newly
//               selected, each list ascending as varint gaps from −1 (|S| = |P| = k, so both lists have d).
// The encoder writes whichever is shorter (ties: delta). The decoder checks every key: inside [0, p], strictly
// increasing, removed keys in P, added keys not in P — so any accepted encoding decodes to k distinct keys per
// position. The implicit set before p = k is {0, …, k − 1} (a query at k − 1 sees exactly those keys).

namespace dsrl::rollout {
namespace {

void put_gaps(std::string& out, const std::vector<int32_t>& sorted) {
    int64_t prev = -1;
    for (const int32_t v : sorted) {
        put_varint(out, static_cast<uint32_t>(v - prev));
        prev = v;
    }
}

int64_t gaps_len(const std::vector<int32_t>& sorted) {
    int64_t n = 0, prev = -1;
    for (const int32_t v : sorted) {
        n += varint_len(static_cast<uint32_t>(v - prev));
        prev = v;
    }
    return n;
}

}  // namespace

std::string encode_indexer_layer(const at::Tensor& sets, int64_t k) {
    TORCH_CHECK(k >= 1, "encode_indexer_layer: k must be >= 1, got ", k);
    TORCH_CHECK(sets.defined() && sets.dim() == 2 && !at::isFloatingType(sets.scalar_type()),
                "encode_indexer_layer: the sets must be an integer [N, k] tensor, got ",
                sets.defined() ? sets.sizes() : at::IntArrayRef{});
    std::string out;
    const at::Tensor rows = sets.to(at::kCPU, at::kLong).contiguous();
    const int64_t n = rows.size(0), width = rows.size(1);
    const int64_t* data = rows.data_ptr<int64_t>();
    std::vector<int32_t> prev(static_cast<size_t>(k)), cur, removed, added;
    for (int64_t i = 0; i < k; ++i) prev[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    for (int64_t p = k; p < n; ++p) {
        cur.clear();
        for (int64_t j = 0; j < width; ++j) {
            const int64_t key = data[p * width + j];
            if (key < 0) continue;
            TORCH_CHECK(key <= p, "encode_indexer_layer: position ", p, " selects key ", key, " after itself");
            cur.push_back(static_cast<int32_t>(key));
        }
        std::sort(cur.begin(), cur.end());
        TORCH_CHECK(static_cast<int64_t>(cur.size()) == k && std::adjacent_find(cur.begin(), cur.end()) == cur.end(),
                    "encode_indexer_layer: position ", p, " must select ", k, " distinct keys, got ", cur.size(),
                    " entries");
        removed.clear();
        added.clear();
        std::set_difference(prev.begin(), prev.end(), cur.begin(), cur.end(), std::back_inserter(removed));
        std::set_difference(cur.begin(), cur.end(), prev.begin(), prev.end(), std::back_inserter(added));
        const auto d = static_cast<uint32_t>(removed.size());
        if (varint_len(2 * d) + gaps_len(removed) + gaps_len(added) <= 1 + gaps_len(cur)) {
            put_varint(out, 2 * d);
            put_gaps(out, removed);
            put_gaps(out, added);
        } else {
            put_varint(out, 1);
            put_gaps(out, cur);
        }
        std::swap(prev, cur);
    }
    return out;
}

namespace {

// Decodes (into `data` [num_tokens, k] when given) or only validates one layer's sets. Memory is O(k) beyond
// `data`, and only when some position is coded (num_tokens > k): a corrupt k cannot request a huge allocation.
void walk_layer(const std::string& bytes, int64_t num_tokens, int64_t k, const std::string& what, int32_t* data) {
    if (num_tokens < 0 || k < 1) {
        throw DataError(
            absl::StrCat(what, ": indexer sets of ", num_tokens, " tokens with k ", k, " are not a valid shape"));
    }
    size_t pos = 0;
    int64_t p = 0;
    auto bad = [&](const std::string& msg) {
        throw DataError(absl::StrCat(what, ": indexer set of position ", p, ": ", msg));
    };
    auto next = [&](const char* field) {
        uint32_t v = 0;
        if (const char* err = get_varint(bytes, &pos, &v)) bad(absl::StrCat(err, " (", field, ")"));
        return v;
    };
    // Reads `count` ascending keys (gaps from −1) into `out`, each in [0, p].
    auto read_keys = [&](int64_t count, std::vector<int32_t>& out, const char* field) {
        out.clear();
        int64_t prev = -1;
        for (int64_t i = 0; i < count; ++i) {
            const uint32_t gap = next(field);
            if (gap == 0) bad(absl::StrCat("zero gap in the ", field, " (keys must be strictly increasing)"));
            const int64_t key = prev + static_cast<int64_t>(gap);
            if (key > p) bad(absl::StrCat(field, ": key ", key, " is after the position"));
            out.push_back(static_cast<int32_t>(key));
            prev = key;
        }
    };
    if (data != nullptr) {
        for (p = 0; p < std::min(num_tokens, k); ++p) {
            for (int64_t j = 0; j < k; ++j) data[p * k + j] = j <= p ? static_cast<int32_t>(j) : -1;
        }
    }
    std::vector<int32_t> prev, cur, removed, added;
    if (num_tokens > k) {
        prev.resize(static_cast<size_t>(k));
        for (int64_t i = 0; i < k; ++i) prev[static_cast<size_t>(i)] = static_cast<int32_t>(i);
    }
    for (p = k; p < num_tokens; ++p) {
        const uint32_t h = next("header");
        if (h == 1) {
            read_keys(k, cur, "raw set");
        } else if (h % 2 == 0 && h / 2 <= static_cast<uint32_t>(k)) {
            const int64_t d = h / 2;
            read_keys(d, removed, "removed keys");
            read_keys(d, added, "added keys");
            // prev minus removed, merged with added (both ascending).
            cur.clear();
            size_t r = 0, a = 0;
            for (const int32_t key : prev) {
                if (r < removed.size() && removed[r] < key)
                    bad(absl::StrCat("removed key ", removed[r], " was not selected"));
                if (r < removed.size() && removed[r] == key) {
                    ++r;
                    continue;
                }
                while (a < added.size() && added[a] < key) cur.push_back(added[a++]);
                if (a < added.size() && added[a] == key) bad(absl::StrCat("added key ", key, " was already selected"));
                cur.push_back(key);
            }
            if (r < removed.size()) bad(absl::StrCat("removed key ", removed[r], " was not selected"));
            while (a < added.size()) cur.push_back(added[a++]);
        } else {
            bad(absl::StrCat("header ", h, " is neither 1 (raw) nor an even count <= 2k"));
        }
        if (data != nullptr) std::copy(cur.begin(), cur.end(), data + p * k);
        std::swap(prev, cur);
    }
    if (pos != bytes.size()) {
        throw DataError(absl::StrCat(what, ": indexer sets hold ", bytes.size() - pos, " trailing bytes after ",
                                     num_tokens, " positions"));
    }
}

}  // namespace

void check_indexer_layer(const std::string& bytes, int64_t num_tokens, int64_t k, const std::string& what) {
    walk_layer(bytes, num_tokens, k, what, nullptr);
}

at::Tensor decode_indexer_layer(const std::string& bytes, int64_t num_tokens, int64_t k, const std::string& what) {
    if (num_tokens < 0 || k < 1) walk_layer(bytes, num_tokens, k, what, nullptr);  // the shape error
    at::Tensor t = at::empty({num_tokens, k}, at::kInt);
    walk_layer(bytes, num_tokens, k, what, t.data_ptr<int32_t>());
    return t;
}

}  // namespace dsrl::rollout
