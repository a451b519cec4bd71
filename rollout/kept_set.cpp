#include "rollout/kept_set.h"

#include <bit>
#include <cstring>

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/pow.h>
#include <ATen/ops/sum.h>
#include <absl/strings/str_cat.h>
#include <c10/util/Exception.h>

#include "core/error.h"
#include "rollout/varint.h"

// Note [Kept-set encoding]
// Tag byte, then: 0 "all" (no payload); 1 the sorted ids as unsigned LEB128 varints of their deltas, the first
// delta taken from -1 (so every delta is >= 1 and a 0 delta is malformed); 2 a bitmap of ceil(vocab / 8)
// bytes, id i at bit i % 8 of byte i / 8 (LSB first), padding bits zero. from_ids picks the smallest (a tie
// between varints and bitmap goes to varints). A kept set is never empty: the sampled token is always kept.

namespace dsrl::rollout {
namespace {

constexpr uint8_t kTagAll = 0, kTagIds = 1, kTagBitmap = 2;
constexpr int64_t kMaxVocab = int64_t{1} << 31;  // ids are int32

int64_t bitmap_bytes(int64_t vocab) { return (vocab + 7) / 8; }

[[noreturn]] void bad_kept(const std::string& msg) { throw DataError(absl::StrCat("kept set: ", msg)); }

// Calls fn(id) for each id of a tag-1 encoding in increasing order, validating as it goes; fn returns false
// to stop early.
template <typename Fn>
void for_each_varint_id(const std::string& bytes, int64_t vocab, Fn fn) {
    int64_t prev = -1;
    size_t i = 1;
    while (i < bytes.size()) {
        uint32_t delta = 0;
        if (const char* bad = get_varint(bytes, &i, &delta)) bad_kept(absl::StrCat(bad, " in the id list"));
        if (delta == 0) bad_kept(absl::StrCat("zero delta after id ", prev, " (ids must be strictly increasing)"));
        const int64_t id = prev + static_cast<int64_t>(delta);
        if (delta > static_cast<uint64_t>(kMaxVocab) || id >= vocab) {
            bad_kept(absl::StrCat("id ", prev, " + ", delta, " is outside the vocabulary [0, ", vocab, ")"));
        }
        if (!fn(static_cast<int32_t>(id))) return;
        prev = id;
    }
}

// Throws a DataError unless `bytes` is a well-formed, non-empty kept set over `vocab`.
void validate_kept(const std::string& bytes, int64_t vocab) {
    if (vocab < 1 || vocab > kMaxVocab) bad_kept(absl::StrCat("vocabulary size ", vocab, " is not in [1, 2^31]"));
    if (bytes.empty()) bad_kept("empty encoding (no tag byte)");
    const auto tag = static_cast<uint8_t>(bytes[0]);
    switch (tag) {
        case kTagAll:
            if (bytes.size() != 1) {
                bad_kept(absl::StrCat("tag 0 (all) takes no payload, got ", bytes.size() - 1, " bytes"));
            }
            return;
        case kTagIds:
            if (bytes.size() < 2) bad_kept("tag 1 (ids) with no ids (a kept set is never empty)");
            for_each_varint_id(bytes, vocab, [](int32_t) { return true; });
            return;
        case kTagBitmap: {
            const int64_t n = bitmap_bytes(vocab);
            if (static_cast<int64_t>(bytes.size()) != 1 + n) {
                bad_kept(
                    absl::StrCat("tag 2 (bitmap) over ", vocab, " ids needs ", n, " bytes, got ", bytes.size() - 1));
            }
            if (vocab % 8 != 0 && (static_cast<uint8_t>(bytes.back()) >> (vocab % 8)) != 0) {
                bad_kept(absl::StrCat("bitmap sets bits beyond the vocabulary size ", vocab));
            }
            bool any = false;
            for (size_t i = 1; i < bytes.size() && !any; ++i) any = bytes[i] != 0;
            if (!any) bad_kept("empty bitmap (a kept set is never empty)");
            return;
        }
        default:
            bad_kept(
                absl::StrCat("unknown encoding tag ", static_cast<int>(tag), " (expected 0 all, 1 ids, 2 bitmap)"));
    }
}

}  // namespace

KeptSet KeptSet::all(int64_t vocab) {
    TORCH_CHECK(vocab >= 1 && vocab <= kMaxVocab, "KeptSet::all: vocab must be in [1, 2^31], got ", vocab);
    KeptSet k;
    k.vocab_ = vocab;
    k.bytes_.assign(1, static_cast<char>(kTagAll));
    return k;
}

KeptSet KeptSet::from_ids(const std::vector<int32_t>& sorted_ids, int64_t vocab) {
    TORCH_CHECK(vocab >= 1 && vocab <= kMaxVocab, "KeptSet::from_ids: vocab must be in [1, 2^31], got ", vocab);
    TORCH_CHECK(!sorted_ids.empty(), "KeptSet::from_ids: a kept set is never empty (the sampled token is kept)");
    int64_t varint_bytes = 1;
    int64_t prev = -1;
    for (size_t i = 0; i < sorted_ids.size(); ++i) {
        const int64_t id = sorted_ids[i];
        TORCH_CHECK(id > prev && id < vocab, "KeptSet::from_ids: ids must be sorted, unique and in [0, ", vocab,
                    "), got ", id, " at index ", i, " after ", prev);
        varint_bytes += varint_len(static_cast<uint32_t>(id - prev));
        prev = id;
    }
    KeptSet k;
    k.vocab_ = vocab;
    if (static_cast<int64_t>(sorted_ids.size()) == vocab) {
        k.bytes_.assign(1, static_cast<char>(kTagAll));
    } else if (varint_bytes <= 1 + bitmap_bytes(vocab)) {
        k.bytes_.reserve(varint_bytes);
        k.bytes_.push_back(static_cast<char>(kTagIds));
        prev = -1;
        for (const int32_t id : sorted_ids) {
            put_varint(k.bytes_, static_cast<uint32_t>(id - prev));
            prev = id;
        }
    } else {
        k.bytes_.assign(1 + bitmap_bytes(vocab), '\0');
        k.bytes_[0] = static_cast<char>(kTagBitmap);
        for (const int32_t id : sorted_ids) k.bytes_[1 + id / 8] |= static_cast<char>(1u << (id % 8));
    }
    return k;
}

KeptSet KeptSet::from_mask(const at::Tensor& mask) {
    TORCH_CHECK(mask.defined() && mask.device().is_cpu() && mask.scalar_type() == at::kBool && mask.dim() == 1,
                "KeptSet::from_mask: expected a CPU bool tensor [vocab], got ",
                mask.defined() ? mask.toString() : "undefined", " of shape ",
                mask.defined() ? mask.sizes() : at::IntArrayRef{});
    const at::Tensor m = mask.contiguous();
    const bool* p = m.data_ptr<bool>();
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < m.numel(); ++i) {
        if (p[i]) ids.push_back(static_cast<int32_t>(i));
    }
    return from_ids(ids, m.numel());
}

KeptSet KeptSet::from_bitmap(const uint8_t* bits, int64_t vocab) {
    TORCH_CHECK(vocab >= 1 && vocab <= kMaxVocab, "KeptSet::from_bitmap: vocab must be in [1, 2^31], got ", vocab);
    const int64_t n = bitmap_bytes(vocab);
    // Zero words are skipped 8 bytes at a time: a truncated kept set is a few ids in a large vocabulary.
    std::vector<int32_t> ids;
    for (int64_t i = 0; i < n;) {
        if (i + 8 <= n) {
            uint64_t word = 0;
            std::memcpy(&word, bits + i, 8);
            if (word == 0) {
                i += 8;
                continue;
            }
        }
        for (uint8_t b = bits[i]; b != 0; b &= static_cast<uint8_t>(b - 1)) {
            const int64_t id = i * 8 + std::countr_zero(b);
            if (id < vocab) ids.push_back(static_cast<int32_t>(id));
        }
        ++i;
    }
    return from_ids(ids, vocab);
}

at::Tensor pack_mask_bits(const at::Tensor& mask) {
    TORCH_CHECK(mask.dim() == 2 && mask.scalar_type() == at::kBool, "pack_mask_bits: expected a bool mask [N, V], got ",
                mask.sizes(), " ", mask.scalar_type());
    const int64_t rows = mask.size(0), vocab = mask.size(1), bytes = bitmap_bytes(vocab);
    at::Tensor m = mask.to(at::kByte);
    if (bytes * 8 != vocab) m = at::constant_pad_nd(m, {0, bytes * 8 - vocab});
    const at::Tensor weights = at::pow(2, at::arange(8, m.options().dtype(at::kInt))).to(at::kByte);  // 1, 2, .., 128
    return (m.view({rows, bytes, 8}) * weights).sum(-1, /*keepdim=*/false, at::kByte);
}

KeptSet KeptSet::from_bytes(std::string bytes, int64_t vocab) {
    validate_kept(bytes, vocab);
    KeptSet k;
    k.bytes_ = std::move(bytes);
    k.vocab_ = vocab;
    return k;
}

std::vector<int32_t> KeptSet::ids() const {
    std::vector<int32_t> out;
    if (bytes_.empty()) return out;
    switch (static_cast<uint8_t>(bytes_[0])) {
        case kTagAll:
            out.resize(vocab_);
            for (int64_t i = 0; i < vocab_; ++i) out[i] = static_cast<int32_t>(i);
            break;
        case kTagIds:
            out.reserve(size());
            for_each_varint_id(bytes_, vocab_, [&](int32_t id) {
                out.push_back(id);
                return true;
            });
            break;
        default:
            for (int64_t i = 0; i < vocab_; ++i) {
                if ((static_cast<uint8_t>(bytes_[1 + i / 8]) >> (i % 8)) & 1) out.push_back(static_cast<int32_t>(i));
            }
    }
    return out;
}

int64_t KeptSet::size() const {
    if (bytes_.empty()) return 0;
    int64_t n = 0;
    switch (static_cast<uint8_t>(bytes_[0])) {
        case kTagAll:
            return vocab_;
        case kTagIds:  // one id per varint: count the bytes that end one
            for (size_t i = 1; i < bytes_.size(); ++i) n += (static_cast<uint8_t>(bytes_[i]) & 0x80) == 0;
            return n;
        default:
            for (size_t i = 1; i < bytes_.size(); ++i) n += std::popcount(static_cast<uint8_t>(bytes_[i]));
            return n;
    }
}

bool KeptSet::contains(int32_t id) const {
    if (bytes_.empty() || id < 0 || id >= vocab_) return false;
    switch (static_cast<uint8_t>(bytes_[0])) {
        case kTagAll:
            return true;
        case kTagIds: {
            bool found = false;
            for_each_varint_id(bytes_, vocab_, [&](int32_t x) {
                found = x == id;
                return x < id;
            });
            return found;
        }
        default:
            return (static_cast<uint8_t>(bytes_[1 + id / 8]) >> (id % 8)) & 1;
    }
}

void KeptSet::fill_mask(at::Tensor row) const {
    TORCH_CHECK(row.defined() && row.device().is_cpu() && row.scalar_type() == at::kBool && row.dim() == 1 &&
                    row.size(0) == vocab_,
                "KeptSet::fill_mask: expected a CPU bool tensor [", vocab_, "], got ",
                row.defined() ? row.toString() : "undefined", " of shape ",
                row.defined() ? row.sizes() : at::IntArrayRef{});
    if (!bytes_.empty() && static_cast<uint8_t>(bytes_[0]) == kTagAll) {
        row.fill_(true);
        return;
    }
    row.fill_(false);
    auto a = row.accessor<bool, 1>();
    for (const int32_t id : ids()) a[id] = true;
}

}  // namespace dsrl::rollout
