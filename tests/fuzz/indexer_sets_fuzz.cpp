// libFuzzer harness: one keep-indexer layer (rollout/indexer_sets.h) through check_indexer_layer and
// decode_indexer_layer, with num_tokens = data[0] % 128 and k = 1 + data[1] % 32 and the rest as the coded sets.
// Both must agree (check accepts exactly what decode accepts), and a decoded layer must survive
// encode → decode unchanged. Corpus: tests/fuzz/indexer_sets/. docs/fuzzing.md.
#include <cstdint>
#include <string>

#include <ATen/ops/equal.h>

#include "rollout/indexer_sets.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 2) return 0;
    const int64_t num_tokens = data[0] % 128;
    const int64_t k = 1 + data[1] % 32;
    const std::string bytes = dsrl::fuzz::bytes_of(data + 2, size - 2);
    bool checked = false, decoded = false;
    dsrl::fuzz::run([&] {
        dsrl::rollout::check_indexer_layer(bytes, num_tokens, k, "<fuzz>");
        checked = true;
    });
    at::Tensor sets;
    dsrl::fuzz::run([&] {
        sets = dsrl::rollout::decode_indexer_layer(bytes, num_tokens, k, "<fuzz>");
        decoded = true;
    });
    if (checked != decoded) {
        std::fprintf(stderr, "indexer sets: check_indexer_layer %s, decode_indexer_layer %s\n",
                     checked ? "accepts" : "rejects", decoded ? "accepts" : "rejects");
        std::abort();
    }
    if (!decoded) return 0;
    const std::string again = dsrl::rollout::encode_indexer_layer(sets, k);
    if (!at::equal(dsrl::rollout::decode_indexer_layer(again, num_tokens, k, "<fuzz again>"), sets)) {
        std::fprintf(stderr, "indexer sets: decode(encode(decode(x))) != decode(x)\n");
        std::abort();
    }
    return 0;
}
