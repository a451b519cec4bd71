// dsrl_bench_dsa: the DSA CUDA kernels at full-size head shapes (SPEC §9), figures not pass/fail.
//
//   build/bin/dsrl_bench_dsa [--lengths 4096,8192,16384,32768,65536,131072] [--topk 2048] [--heads 128]
//                            [--dense-max 65536] [--reps 5] [--decode-batch 64] [--warmup-max 16384]
//                            [--small-decode 1,64,256] [--small-only 0]
//
// 0. The small models' decode attention (single_gpu.yaml: 12 heads, entry 256 + 32, k = 128, bf16) over a pool of
//    65,536 entries, one query per sequence, at each batch of --small-decode: the tensor-core kernel against the SIMT
//    kernel (dsa::cuda::sparse_mla_simt with and without tensor_cores), 20 calls captured in one CUDA graph, so the
//    time is the kernels' and not the host's; GB/s of entries read. --small-only 1 stops after it.
// 1. The device's bf16 matmul ceiling: an 8192³ at::matmul on random data (median of --reps after warm-up).
// 2. Per length L (batch 1, causal, k = --topk entries per query — min(k, t + 1) valid for query t, spread over
//    the visible keys): the sparse MLA forward (wgmma, and the mma.sync baseline) and backward kernels (H heads,
//    entry 512 + 64, d_v 512); the indexer (64 heads × 128) on the last 4096 queries — logits bf16 and FP8, the
//    logits' backward, top-k of the logit rows — and fused logits + top-k over all L queries (bf16, FP8); each
//    with time, TFLOPS and fraction of the ceiling.
// 3. The whole DSA attention layer — indexer top-k + sparse attention forward + backward — against dense causal
//    attention on the expanded heads (at::scaled_dot_product_attention, q/k 192 = 128 nope + 64 rope, v 128,
//    forward + backward), in the same run, with each side's peak of allocated memory. Dense runs up to
//    --dense-max.
// 4. Decode: --decode-batch sequences, one query each, over an L-entry latent cache (split-KV kernel).
// 5. The dense warm-up's indexer loss (dsa::indexer_warmup_loss, forward + backward) with its indexer logits on
//    the kernels vs its ATen path, time and peak memory, up to --warmup-max.
// FLOPs: attention 2·H·(576 + 512) per (query, valid entry) forward, 2.5× that backward (recompute of S, dP, dQ,
// dKV); indexer 2·64·128 per visible (query, key) pair, 3× that backward (q·k recompute, dq, dk); dense
// attention 2·H·(192 + 128) per causal pair forward, 2.5× backward. Times are medians of CUDA-event-timed repetitions
// after one warm-up.
#include <ATen/TensorOperators.h>
#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/matmul.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/scaled_dot_product_attention.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/csrc/autograd/autograd.h>

#include <absl/strings/numbers.h>
#include <absl/strings/str_cat.h>
#include <absl/strings/str_split.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "core/error.h"
#include "core/main_guard.h"
#include "dsa/indexer_cuda.h"
#include "dsa/indexer_loss.h"
#include "dsa/sparse_attention.h"

namespace {

struct Options {
    std::vector<int64_t> lengths = {4096, 8192, 16384, 32768, 65536, 131072};
    int64_t topk = 2048;
    int64_t heads = 128;
    int64_t dense_max = 65536;
    int reps = 5;
    int64_t decode_batch = 64;
    int64_t warmup_max = 16384;
    std::vector<int64_t> small_decode = {1, 64, 256};
    int64_t small_only = 0;
};

// Parses the flags; exits 0 after --help.
Options parse(int argc, char** argv) {
    Options o;
    const bool go =
        dsrl::bench::Flags("dsrl_bench_dsa")
            .custom(
                "--lengths", [&](const std::string& v) { o.lengths = dsrl::bench::parse_lengths(v, "dsrl_bench_dsa"); },
                "comma-separated sequence lengths", "4096,...,131072")
            .integer("--topk", &o.topk, 1, "index_topk")
            .integer("--heads", &o.heads, 1, "attention heads")
            .integer("--dense-max", &o.dense_max, 0, "longest length measured with dense SDPA")
            .integer("--reps", &o.reps, 1, "timed runs per point (median)")
            .integer("--decode-batch", &o.decode_batch, 0, "decode batch size (0: no decode rows)")
            .integer("--warmup-max", &o.warmup_max, 0, "longest length of the warm-up loss rows")
            .custom(
                "--small-decode",
                [&](const std::string& v) { o.small_decode = dsrl::bench::parse_lengths(v, "dsrl_bench_dsa"); },
                "batches of the small-model decode attention rows", "1,64,256")
            .integer("--small-only", &o.small_only, 0, "1: only the small-model decode rows")
            .parse(argc, argv);
    if (!go) std::exit(0);
    return o;
}

// Median milliseconds of fn over reps CUDA-event-timed runs, after one warm-up run.
double time_ms(const std::function<void()>& fn, int reps) {
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    fn();
    C10_CUDA_CHECK(cudaStreamSynchronize(stream));
    cudaEvent_t start, stop;
    C10_CUDA_CHECK(cudaEventCreate(&start));
    C10_CUDA_CHECK(cudaEventCreate(&stop));
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
        C10_CUDA_CHECK(cudaEventRecord(start, stream));
        fn();
        C10_CUDA_CHECK(cudaEventRecord(stop, stream));
        C10_CUDA_CHECK(cudaEventSynchronize(stop));
        float t = 0.f;
        C10_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
        ms.push_back(t);
    }
    C10_CUDA_CHECK(cudaEventDestroy(start));
    C10_CUDA_CHECK(cudaEventDestroy(stop));
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
}

double peak_gib_of(const std::function<void()>& fn) {
    const c10::DeviceIndex dev = c10::cuda::current_device();
    C10_CUDA_CHECK(cudaDeviceSynchronize());
    const auto before = c10::cuda::CUDACachingAllocator::getDeviceStats(dev);
    c10::cuda::CUDACachingAllocator::resetPeakStats(dev);
    fn();
    C10_CUDA_CHECK(cudaDeviceSynchronize());
    const auto after = c10::cuda::CUDACachingAllocator::getDeviceStats(dev);
    const int64_t base = before.allocated_bytes[0].current;
    return double(after.allocated_bytes[0].peak - base) / double(int64_t(1) << 30);
}

// Causal spread selection: query t keeps min(k, t + 1) distinct keys ⌊j·(t + 1)/k'⌋, the rest −1.
at::Tensor spread_indices(int64_t L, int64_t k) {
    const auto opts = at::TensorOptions().dtype(at::kLong).device(at::kCUDA);
    const at::Tensor t = at::arange(L, opts).view({L, 1});
    const at::Tensor j = at::arange(k, opts).view({1, k});
    const at::Tensor visible = t + 1;
    const at::Tensor kept = at::minimum(visible, at::full_like(visible, k));
    const at::Tensor idx = at::where(j < kept, (j * visible).div(kept, "floor"), at::full_like(j * visible, -1));
    return idx.to(at::kInt).view({1, L, k});
}

// Σ_t min(k, t + 1): valid (query, entry) pairs.
double valid_pairs(int64_t L, int64_t k) {
    const double full = double(std::max<int64_t>(0, L - k)) * double(k);
    const int64_t ramp = std::min(L, k);
    return full + double(ramp) * double(ramp + 1) / 2.0;
}

// Section 0: the single_gpu.yaml decode attention, tensor cores against SIMT, kernels only (a captured graph of 20
// calls; the median replay over 20).
void small_decode_rows(const Options& o) {
    const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
    const int64_t H = 12, C = 256, R = 32, K = 128, S = 65536, calls = 20;
    std::printf("small-model decode attention (H %ld, entry %ld + %ld, k %ld, bf16 pool of %ld):\n", long(H), long(C),
                long(R), long(K), long(S));
    const at::Tensor c_kv = at::randn({1, S, C}, bf16), k_pe = at::randn({1, S, R}, bf16);
    for (const int64_t N : o.small_decode) {
        const at::Tensor q_lat = at::randn({1, N, H, C}, bf16), q_pe = at::randn({1, N, H, R}, bf16);
        const at::Tensor idx = at::randint(S, {1, N, K}, bf16.dtype(at::kLong));
        double us[2];
        for (const bool tensor_cores : {true, false}) {
            const auto run = [&] {
                for (int64_t i = 0; i < calls; ++i)
                    (void)dsrl::dsa::cuda::sparse_mla_simt(q_lat, q_pe, c_kv, k_pe, idx, 0.06, tensor_cores);
            };
            const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
            at::cuda::CUDAGraph graph;
            {
                const c10::cuda::CUDAStreamGuard on_side(side);
                run();  // warm-up (raises the kernels' shared-memory limits outside the capture)
                side.synchronize();
                graph.capture_begin();
                run();
                graph.capture_end();
            }
            us[tensor_cores ? 0 : 1] = time_ms([&] { graph.replay(); }, std::max(o.reps, 20)) * 1e3 / double(calls);
        }
        const double bytes = double(N) * double(K) * double(C + R) * 2.0;
        std::printf("  batch %4ld: tensor cores %8.1f us (%5.0f GB/s)   SIMT %8.1f us (%5.0f GB/s)   %.2fx%s\n",
                    long(N), us[0], bytes / (us[0] * 1e-6) / 1e9, us[1], bytes / (us[1] * 1e-6) / 1e9, us[1] / us[0],
                    dsrl::dsa::cuda::sparse_mla_simt_uses_tensor_cores(q_lat, q_pe, c_kv, k_pe, idx)
                        ? ""
                        : " (the tensor-core kernel did not engage)");
        std::fflush(stdout);
    }
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] {
        const Options o = parse(argc, argv);
        if (!dsrl::built_with_cuda() || c10::cuda::device_count() == 0) {
            throw dsrl::ConfigError("dsrl_bench_dsa needs a CUDA build and a visible GPU");
        }
        const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
        const auto f32 = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
        cudaDeviceProp prop{};
        C10_CUDA_CHECK(cudaGetDeviceProperties(&prop, c10::cuda::current_device()));

        // 1. Ceiling.
        const at::Tensor ma = at::randn({8192, 8192}, bf16), mb = at::randn({8192, 8192}, bf16);
        const double mm_ms = time_ms([&] { (void)at::matmul(ma, mb); }, std::max(o.reps, 10));
        const double ceiling = 2.0 * 8192.0 * 8192.0 * 8192.0 / (mm_ms * 1e-3) / 1e12;
        std::printf("device %s, %d SMs; bf16 matmul 8192^3: %.3f ms = %.0f TFLOPS (the ceiling below)\n", prop.name,
                    prop.multiProcessorCount, mm_ms, ceiling);
        small_decode_rows(o);
        if (o.small_only != 0) return 0;
        const int64_t H = o.heads, K = o.topk, HI = 64, DI = 128;
        const double scale = 1.0 / std::sqrt(192.0);
        std::printf("\n%8s %-26s %10s %8s %7s %10s\n", "L", "kernel", "ms", "TFLOPS", "ceil%", "peak GiB");
        auto row = [&](int64_t L, const char* name, double ms, double flops, double gib) {
            const double tf = flops / (ms * 1e-3) / 1e12;
            if (flops <= 0) {
                std::printf("%8ld %-26s %10.3f %8s %7s %10.2f\n", long(L), name, ms, "-", "-", gib);
                std::fflush(stdout);
                return;
            }
            std::printf("%8ld %-26s %10.3f %8.1f %6.1f%% %10.2f\n", long(L), name, ms, tf, 100.0 * tf / ceiling, gib);
            std::fflush(stdout);
        };

        auto one_length = [&](const int64_t L) {
            const at::Tensor q_lat = at::randn({1, L, H, 512}, bf16), q_pe = at::randn({1, L, H, 64}, bf16);
            const at::Tensor c_kv = at::randn({1, L, 512}, bf16), k_pe = at::randn({1, L, 64}, bf16);
            const at::Tensor idx = spread_indices(L, K);
            const double attn_flops = valid_pairs(L, K) * 2.0 * double(H) * (576.0 + 512.0);

            // 2. Kernels alone.
            const double fwd_ms = time_ms(
                [&] { (void)dsrl::dsa::cuda::sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, idx, scale); }, o.reps);
            row(L, "sparse_mla fwd (wgmma)", fwd_ms, attn_flops, 0.0);
            const double fwd_mma_ms = time_ms(
                [&] {
                    (void)dsrl::dsa::cuda::sparse_mla_attention(q_lat, q_pe, c_kv, k_pe, idx, scale,
                                                                dsrl::dsa::cuda::MlaKernel::kMmaSync);
                },
                o.reps);
            row(L, "sparse_mla fwd (mma.sync)", fwd_mma_ms, attn_flops, 0.0);
            const at::Tensor ql = q_lat.clone().requires_grad_(), qp = q_pe.clone().requires_grad_();
            const at::Tensor cl = c_kv.clone().requires_grad_(), kp = k_pe.clone().requires_grad_();
            const at::Tensor grad_out = at::randn({1, L, H, 512}, bf16);
            {  // the retained graph holds out and the inputs: released before the layer runs
                const dsrl::dsa::AttentionOutput fwd =
                    dsrl::dsa::cuda::sparse_mla_attention(ql, qp, cl, kp, idx, scale);
                const double bwd_ms = time_ms(
                    [&] {
                        (void)torch::autograd::grad({fwd.out}, {ql, qp, cl, kp}, {grad_out}, /*retain_graph=*/true);
                    },
                    o.reps);
                row(L, "sparse_mla bwd", bwd_ms, 2.5 * attn_flops, 0.0);
            }

            const at::Tensor iq = at::randn({1, L, HI, DI}, bf16), ik = at::randn({1, L, DI}, bf16);
            const at::Tensor iw = at::randn({1, L, HI}, f32) * (1.0 / 8.0);
            const at::Tensor pos = at::arange(L, f32.dtype(at::kLong)).view({1, L});
            const double idx_flops = double(L) * double(L + 1) / 2.0 * 2.0 * double(HI * DI);
            const double idx_scale = 1.0 / std::sqrt(double(DI));
            {
                // The indexer's parts on the last Tc queries (full-length rows): logits bf16 / FP8, their
                // backward, and top-k of the logits rows.
                const int64_t Tc = std::min<int64_t>(L, 4096);
                const at::Tensor q_c = iq.narrow(1, L - Tc, Tc), w_c = iw.narrow(1, L - Tc, Tc);
                const at::Tensor pos_c = pos.narrow(1, L - Tc, Tc);
                const double pairs = double(Tc) * double(L) - double(Tc) * double(Tc - 1) / 2.0;
                const double flops = pairs * 2.0 * double(HI * DI);
                at::Tensor logits;
                const double lg_ms = time_ms(
                    [&] { logits = dsrl::dsa::cuda::indexer_logits(q_c, ik, w_c, idx_scale, pos_c, at::Tensor()); },
                    o.reps);
                row(L, "indexer logits bf16 (4K q)", lg_ms, flops, 0.0);
                const dsrl::dsa::cuda::Fp8Rows q8 = dsrl::dsa::cuda::quantize_fp8_rows(q_c);
                const dsrl::dsa::cuda::Fp8Rows k8 = dsrl::dsa::cuda::quantize_fp8_rows(ik);
                const double lg8_ms = time_ms(
                    [&] {
                        (void)dsrl::dsa::cuda::indexer_logits_fp8(q8.values, q8.scales, k8.values, k8.scales, w_c,
                                                                  idx_scale, pos_c, at::Tensor());
                    },
                    o.reps);
                row(L, "indexer logits fp8 (4K q)", lg8_ms, flops, 0.0);
                const at::Tensor g = at::randn({1, Tc, L}, f32);
                const double lgb_ms = time_ms(
                    [&] {
                        (void)dsrl::dsa::cuda::indexer_logits_backward(q_c, ik, w_c, idx_scale, pos_c, at::Tensor(), g);
                    },
                    o.reps);
                row(L, "indexer logits bwd (4K q)", lgb_ms, 3.0 * flops, 0.0);
                const at::Tensor rows = logits.view({Tc, L});
                const double tk_ms = time_ms([&] { (void)dsrl::dsa::cuda::topk_rows(rows, K); }, o.reps);
                std::printf("%8ld %-26s %10.3f %8s %7s %10s  (%.0f GB/s reading the logits)\n", long(L),
                            "topk_rows (4K rows)", tk_ms, "-", "-", "-", double(Tc) * double(L) * 4.0 / (tk_ms * 1e6));
            }
            const double topk_ms = time_ms(
                [&] {
                    (void)dsrl::dsa::cuda::indexer_topk(iq, ik, iw, 1.0 / std::sqrt(double(DI)), pos, at::Tensor(), K);
                },
                o.reps);
            row(L, "indexer logits+topk bf16", topk_ms, idx_flops, 0.0);
            const double topk8_ms = time_ms(
                [&] {
                    (void)dsrl::dsa::cuda::indexer_topk(iq, ik, iw, 1.0 / std::sqrt(double(DI)), pos, at::Tensor(), K,
                                                        1024, /*fp8=*/true);
                },
                o.reps);
            row(L, "indexer logits+topk fp8", topk8_ms, idx_flops, 0.0);

            // 3. The layer: indexer + top-k (no gradient) + sparse attention forward + backward, vs dense.
            auto dsa_layer = [&] {
                const at::Tensor sel =
                    dsrl::dsa::cuda::indexer_topk(iq, ik, iw, 1.0 / std::sqrt(double(DI)), pos, at::Tensor(), K);
                const dsrl::dsa::AttentionOutput a = dsrl::dsa::cuda::sparse_mla_attention(ql, qp, cl, kp, sel, scale);
                (void)torch::autograd::grad({a.out}, {ql, qp, cl, kp}, {grad_out});
            };
            const double layer_gib = peak_gib_of(dsa_layer);
            const double layer_ms = time_ms(dsa_layer, o.reps);
            row(L, "DSA layer fwd+bwd", layer_ms, 3.5 * attn_flops + idx_flops, layer_gib);
            if (L <= o.dense_max) {
                const at::Tensor dq = at::randn({1, H, L, 192}, bf16).requires_grad_();
                const at::Tensor dk = at::randn({1, H, L, 192}, bf16).requires_grad_();
                const at::Tensor dv = at::randn({1, H, L, 128}, bf16).requires_grad_();
                const at::Tensor dgo = at::randn({1, H, L, 128}, bf16);
                auto dense_layer = [&] {
                    const at::Tensor out = at::scaled_dot_product_attention(dq, dk, dv, {}, 0.0, /*is_causal=*/true);
                    (void)torch::autograd::grad({out}, {dq, dk, dv}, {dgo});
                };
                const double dense_gib = peak_gib_of(dense_layer);
                const double dense_ms = time_ms(dense_layer, o.reps);
                const double dense_flops = 3.5 * double(L) * double(L + 1) / 2.0 * 2.0 * double(H) * (192.0 + 128.0);
                row(L, "dense SDPA fwd+bwd", dense_ms, dense_flops, dense_gib);
                std::printf("%8ld DSA layer speed-up over dense: %.2fx\n", long(L), dense_ms / layer_ms);
            }

            // 4. Decode over this cache.
            if (o.decode_batch > 0) {
                const int64_t Bd = o.decode_batch;
                const at::Tensor dq_lat = at::randn({Bd, 1, H, 512}, bf16), dq_pe = at::randn({Bd, 1, H, 64}, bf16);
                const at::Tensor cache_kv = c_kv.expand({Bd, L, 512}), cache_pe = k_pe.expand({Bd, L, 64});
                const at::Tensor last = idx.narrow(1, L - 1, 1).expand({Bd, 1, K}).contiguous();
                const double dec_ms = time_ms(
                    [&] {
                        (void)dsrl::dsa::cuda::sparse_mla_attention(dq_lat, dq_pe, cache_kv, cache_pe, last, scale);
                    },
                    o.reps);
                const double entries = double(Bd) * double(std::min(K, L));
                const double gbs = entries * 576.0 * 2.0 / (dec_ms * 1e-3) / 1e9;
                row(L, "decode (batch x 1 query)", dec_ms, entries * 2.0 * double(H) * 1088.0, 0.0);
                std::printf("%8ld decode: %.0f GB/s of gathered entries\n", long(L), gbs);
            }

            // 5. The dense warm-up's indexer loss (query tiles of 128), forward + backward: its indexer logits
            // and their backward on the kernels (model.impl auto) vs the ATen path (reference), same inputs.
            if (L <= o.warmup_max) {
                dsrl::dsa::AttentionInputs att{q_lat, q_pe, c_kv, k_pe, at::zeros({1, L, H}, f32), scale, true};
                const at::Tensor wq = iq.clone().requires_grad_(), wk = ik.clone().requires_grad_();
                const at::Tensor ww = iw.clone().requires_grad_();
                double ms[2], gib[2], loss[2];
                for (const int path : {0, 1}) {
                    const dsrl::Impl impl = path == 0 ? dsrl::Impl::kReference : dsrl::Impl::kCuda;
                    auto step = [&] {
                        const at::Tensor l =
                            dsrl::dsa::indexer_warmup_loss({wq, wk, ww}, att, pos, at::Tensor(), 128, impl).loss;
                        (void)torch::autograd::grad({l}, {wq, wk, ww});
                        loss[path] = l.item<double>();
                    };
                    gib[path] = peak_gib_of(step);
                    ms[path] = time_ms(step, o.reps);
                }
                row(L, "warm-up loss fwd+bwd ATen", ms[0], 0.0, gib[0]);
                row(L, "warm-up loss fwd+bwd kern", ms[1], 0.0, gib[1]);
                std::printf("%8ld warm-up loss: kernels %.2fx faster, loss %.6g vs %.6g (ATen)\n", long(L),
                            ms[0] / ms[1], loss[1], loss[0]);
            }
        };
        for (const int64_t L : o.lengths) {
            // A length that does not fit this device's memory (131072 needs more than an 80 GiB H100 has) ends
            // the table with a line saying so; the longer ones would not fit either.
            try {
                one_length(L);
            } catch (const c10::OutOfMemoryError& e) {
                c10::cuda::CUDACachingAllocator::emptyCache();
                std::printf(
                    "%8ld stopped: out of device memory at this length (%.0f GiB device); longer lengths "
                    "skipped\n",
                    long(L), double(prop.totalGlobalMem) / double(1ull << 30));
                break;
            }
        }
        return 0;
    });
}
