// libFuzzer harness: rollout records (rollout/record.h) through deserialize_groups. An input that starts with the
// magic "DSRLROLL" is read as it is; any other input is a payload that the harness frames (magic, version 2 — or 1
// when the first byte is odd — payload size, CRC-32), so mutations reach the payload parser instead of stopping at
// the checksum. Every accepted record is then used as the trainer uses it: routes and (for a k a model could have)
// the keep-indexer key sets decoded, the kept sets expanded, and serialize → deserialize must give the same bytes —
// none of which may throw once the reader has accepted the record.
// Corpus: tests/fuzz/rollout_record/. docs/fuzzing.md.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>

#include "rollout/record.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

std::string frame(const uint8_t* data, size_t size) {
    const uint32_t version = size > 0 && (data[0] & 1) ? 1 : 2;
    const std::string payload = size > 0 ? dsrl::fuzz::bytes_of(data + 1, size - 1) : std::string();
    std::string out = "DSRLROLL";
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(version >> (8 * i)));
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(uint64_t{payload.size()} >> (8 * i)));
    out += payload;
    const uint32_t crc = dsrl::rollout::crc32(payload.data(), payload.size());
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(crc >> (8 * i)));
    return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    const bool raw = size >= 8 && std::memcmp(data, "DSRLROLL", 8) == 0;
    const std::string bytes = raw ? dsrl::fuzz::bytes_of(data, size) : frame(data, size);
    std::vector<dsrl::rollout::SampleGroup> groups;
    bool accepted = false;
    dsrl::fuzz::run([&] {
        groups = dsrl::rollout::deserialize_groups(bytes, "<fuzz>");
        accepted = true;
    });
    if (!accepted) return 0;
    // The reader validated the record: using it must not throw at all.
    {
        int64_t sum = 0;
        for (const dsrl::rollout::SampleGroup& g : groups) {
            for (const dsrl::rollout::Sample& s : g.samples) {
                // Readers walk the model's MoE layers, not the record's count (which with route_top_k 0 costs no
                // bytes): a few are enough here.
                for (int32_t l = 0; l < std::min(s.num_moe_layers, 8); ++l) sum += s.route_tensor(l).numel();
                // Readers decode key sets only at the model's index_topk (rollout/generator.cpp checks it first).
                if (s.indexer_topk <= 4096) {
                    for (size_t l = 0; l < s.indexer.size(); ++l)
                        sum += s.indexer_sets(static_cast<int32_t>(l)).numel();
                }
                // Likewise the kept sets only at the model's vocabulary size.
                if (s.vocab_size <= (1 << 20)) {
                    for (const dsrl::rollout::KeptSet& k : s.kept) sum += static_cast<int64_t>(k.ids().size());
                }
            }
        }
        const std::string again = dsrl::rollout::serialize_groups(groups);
        if (dsrl::rollout::serialize_groups(dsrl::rollout::deserialize_groups(again, "<fuzz again>")) != again) {
            std::fprintf(stderr, "rollout record: serialize(deserialize(x)) is not stable\n");
            std::abort();
        }
        if (sum == -1) std::printf(" ");
    }
    return 0;
}
