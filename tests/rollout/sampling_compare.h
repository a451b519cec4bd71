// Comparing two samplers of the same logits where the sums run in different orders (the sampling kernel against
// processed_logprobs + sample_with_uniforms): their kept sets and drawn ids may differ, but only where a sum lands
// within rounding of a threshold — the top-p mass before an id, the min-p floor, or the draw's cumulative mass at the
// uniform. These helpers find the rows that differ and say whether every difference is such a case (tests only: CPU
// loops over the few differing rows).
#pragma once

#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/cumsum.h>
#include <ATen/ops/log_softmax.h>
#include <ATen/ops/sort.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "rollout/config.h"

namespace dsrl::rollout::testing {

/// Bits [R, ceil(V / 8)] uint8 (pack_mask_bits' layout: id 8 b + j is bit j of byte b) as a bool mask [R, V] on CPU.
inline at::Tensor unpack_mask_bits(const at::Tensor& bits, int64_t vocab) {
    const at::Tensor b = bits.cpu().to(at::kInt).unsqueeze(-1);
    const at::Tensor shifts = at::arange(8, b.options());
    return (b.bitwise_right_shift(shifts).bitwise_and(1) != 0).reshape({bits.size(0), -1}).narrow(1, 0, vocab);
}

struct Boundary {
    bool ok = true;   ///< every difference sits at a threshold
    std::string why;  ///< the first one that does not
};

/// Whether kept sets a and b (bool [R, V], CPU) of the same logits [R, V] under p differ only at a truncation
/// threshold: every id kept by one and not the other has its mass before it (in descending-probability order over what
/// top-k and min-p keep, fp64, as processed_logprobs sums it) within `tol` of top_p, or its log-prob within `tol` of
/// the min-p floor.
inline Boundary kept_sets_differ_at_thresholds(
    const at::Tensor& logits, const SamplingParams& p, const at::Tensor& a, const at::Tensor& b, double tol) {
    Boundary out;
    const at::Tensor differ = (a != b).any(1);
    const at::Tensor x = logits.cpu().to(at::kFloat);
    for (int64_t r = 0; r < x.size(0); ++r) {
        if (!differ[r].item<bool>()) continue;
        const at::Tensor logp = at::log_softmax(x[r] / p.temperature, -1);
        const auto [sorted, order] = at::sort(logp, /*stable=*/true, /*dim=*/-1, /*descending=*/true);
        const int64_t V = logp.size(0);
        const double floor_lp = p.min_p > 0 ? sorted[0].item<double>() + std::log(p.min_p) : -INFINITY;
        std::vector<double> before(V);
        double mass = 0.0;
        for (int64_t k = 0; k < V; ++k) {  // the mass before rank k over the ranks top-k and min-p keep
            before[k] = mass;
            const double lp = sorted[k].item<double>();
            // exp in fp32, then summed in fp64, as processed_logprobs does.
            if ((p.top_k <= 0 || k < p.top_k) && lp >= floor_lp) {
                mass += static_cast<double>(std::exp(static_cast<float>(lp)));
            }
        }
        for (int64_t k = 0; k < V; ++k) {
            const int64_t id = order[k].item<int64_t>();
            if (a[r][id].item<bool>() == b[r][id].item<bool>()) continue;
            const bool at_top_p = p.top_p < 1 && std::abs(before[k] - p.top_p) <= tol;
            const bool at_min_p = p.min_p > 0 && std::abs(sorted[k].item<double>() - floor_lp) <= tol;
            if (!at_top_p && !at_min_p) {
                out.ok = false;
                out.why = "row " + std::to_string(r) + ", id " + std::to_string(id) + " (rank " + std::to_string(k) +
                          "): mass before " + std::to_string(before[k]) + ", log-prob " +
                          std::to_string(sorted[k].item<double>()) + " — no threshold within " + std::to_string(tol);
                return out;
            }
        }
    }
    return out;
}

/// Whether ids a and b, drawn from the same row of log-probs (fp32 [V], CPU) with uniform u, differ only because the
/// draw lands at the boundary between them: the cumulative mass (fp64, id order) up to the lower of the two within
/// `tol` of u times the total.
inline bool draws_differ_at_boundary(const at::Tensor& logp, double u, int64_t a, int64_t b, double tol) {
    const at::Tensor cdf = at::cumsum(logp.cpu().to(at::kDouble).exp(), -1);
    const double target = u * cdf[cdf.size(0) - 1].item<double>();
    return std::abs(cdf[std::min(a, b)].item<double>() - target) <= tol;
}

}  // namespace dsrl::rollout::testing
