// The kept set of one sampling step (SPEC §4: keep-sampling-mask): which token ids survived the top-p/top-k
// truncation, in a compact encoding that rollout records (rollout/record.h) store per response token.
//
//   KeptSet k = KeptSet::from_mask(row_mask);      // bool [vocab]
//   k.fill_mask(row);                               // back to a mask; k.bytes() is what a record stores
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dsrl::rollout {

/// The kept set of one sampling step: the token ids that survived temperature + top-k/top-p/min-p
/// truncation. Encoded compactly: "all" (no truncation: 1 byte), sorted ids as delta varints, or a bitmap
/// over the vocabulary — whichever is smallest.
class KeptSet {
public:
    KeptSet() = default;
    /// From sorted, unique ids in [0, vocab). `ids.size() == vocab` encodes as "all".
    static KeptSet from_ids(const std::vector<int32_t>& sorted_ids, int64_t vocab);
    /// The whole vocabulary (no truncation), without building the id list.
    static KeptSet all(int64_t vocab);
    /// From a bool mask [vocab] (CPU).
    static KeptSet from_mask(const at::Tensor& mask);
    /// From ceil(vocab / 8) bytes, id i at bit i % 8 of byte i / 8 (LSB first; pack_mask_bits' layout, bits past
    /// the vocabulary ignored): what the rollout engine copies to the host instead of a bool mask (8x smaller).
    static KeptSet from_bitmap(const uint8_t* bits, int64_t vocab);
    /// From encoded bytes (validated: a DataError when malformed or out of range).
    static KeptSet from_bytes(std::string bytes, int64_t vocab);
    std::vector<int32_t> ids() const;
    int64_t size() const;  ///< number of kept ids
    int64_t vocab() const { return vocab_; }
    bool contains(int32_t id) const;
    /// Writes the set into `row` (bool [vocab], CPU), true = kept.
    void fill_mask(at::Tensor row) const;
    const std::string& bytes() const { return bytes_; }

private:
    std::string bytes_;  ///< tag byte (0 all, 1 delta varints, 2 bitmap) + payload
    int64_t vocab_ = 0;
};

/// Packs bool masks [N, V] (any device) into bytes [N, ceil(V / 8)] uint8 on the same device, KeptSet::from_bitmap's
/// layout: a few elementwise kernels, no host sync.
at::Tensor pack_mask_bits(const at::Tensor& mask);

}  // namespace dsrl::rollout
