#include "rollout/engine.h"

#include <ATen/TensorOperators.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <ATen/record_function.h>
#include <c10/cuda/CUDACachingAllocator.h>
#ifdef DSRL_WITH_CUDA
#include <ATen/autocast_mode.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "rollout/sampling_cuda.h"
#endif
#include <c10/util/Exception.h>

#include <absl/strings/str_cat.h>
#include <absl/strings/str_format.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <future>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "core/error.h"
#include "core/fs.h"
#include "core/logging.h"
#include "core/rng.h"

namespace dsrl::rollout {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of the paged pool with reference counts; block 0 is the scratch block padding tokens write to.
class BlockPool {
public:
    explicit BlockPool(int64_t blocks) : refs_(static_cast<size_t>(blocks), 0) {
        for (int64_t b = blocks - 1; b >= 1; --b) free_.push_back(static_cast<int32_t>(b));
    }
    int64_t free() const { return static_cast<int64_t>(free_.size()); }
    int64_t total() const { return static_cast<int64_t>(refs_.size()) - 1; }  // the scratch block aside
    int64_t used() const { return total() - free(); }
    int32_t alloc() {
        DSRL_INTERNAL_ASSERT(!free_.empty(), "BlockPool: no free block");
        const int32_t b = free_.back();
        free_.pop_back();
        refs_[b] = 1;
        return b;
    }
    void share(int32_t b) { ++refs_[b]; }
    void release(int32_t b) {
        if (--refs_[b] == 0) free_.push_back(b);
    }
    int32_t refs(int32_t b) const { return refs_[b]; }

private:
    std::vector<int32_t> refs_;
    std::vector<int32_t> free_;
};

// One sequence: a request's sample as it grows, its generator and its cache blocks.
struct Seq {
    const GenerationRequest* req = nullptr;
    Sample sample;
    at::Generator gen;
    std::vector<int32_t> blocks;               // block table: position p is in blocks[p / block_size]
    int64_t cached = 0;                        // positions whose entries are in the cache
    std::vector<std::vector<int64_t>> routes;  // [moe layer] -> expert ids of every fed position, [n · k]
    std::vector<std::vector<int32_t>> topk;    // [layer] -> key sets of every fed position, [n · K]
    int64_t admitted = 0;                      // admission order: preemption evicts the latest first
    bool finished = false;
    int64_t num_tokens() const { return static_cast<int64_t>(sample.prompt.size() + sample.response.size()); }
    int64_t generated() const { return static_cast<int64_t>(sample.response.size()); }
};

// What waits for admission: a group of samples of one prompt (prefilled once), or one evicted sequence to recompute.
struct Pending {
    std::vector<Seq*> seqs;
    bool recompute = false;
    /// Tokens to prefill: the prompt, or for a recomputation the prompt and the response so far.
    int64_t length() const {
        return recompute ? seqs[0]->num_tokens() : static_cast<int64_t>(seqs[0]->sample.prompt.size());
    }
    std::vector<int32_t> tokens() const {
        std::vector<int32_t> t = seqs[0]->sample.prompt;
        if (recompute) t.insert(t.end(), seqs[0]->sample.response.begin(), seqs[0]->sample.response.end());
        return t;
    }
};

// Appends positions [0, n) of sequence i of `all` (a contiguous CPU tensor [B, L, w] of T) to a flat list: pointer
// arithmetic, no tensor per sequence (a prefill of 256 prompts appended 7 layers x 256 slices of each record).
template <typename T>
void append_rows(std::vector<T>& to, const at::Tensor& all, int64_t i, int64_t n) {
    const int64_t w = all.size(2);
    const T* p = all.data_ptr<T>() + (i * all.size(1)) * w;
    to.insert(to.end(), p, p + n * w);
}

// Appends one position's record of every layer, p[j · k .. (j + 1) · k) for layer j, to the per-layer flat lists.
template <typename T>
void append_layers(std::vector<std::vector<T>>& to, const T* p, int64_t layers, int64_t k) {
    to.resize(static_cast<size_t>(layers));
    for (int64_t j = 0; j < layers; ++j) to[j].insert(to[j].end(), p + j * k, p + (j + 1) * k);
}

#ifdef DSRL_WITH_CUDA
// A CUDA-graph node's kind, for GenerationStats::graph_node_kinds.
const char* graph_node_kind(cudaGraphNodeType t) {
    switch (t) {
        case cudaGraphNodeTypeKernel:
            return "kernel";
        case cudaGraphNodeTypeMemcpy:
            return "memcpy";
        case cudaGraphNodeTypeMemset:
            return "memset";
        case cudaGraphNodeTypeHost:
            return "host";
        case cudaGraphNodeTypeEventRecord:
            return "event record";
        case cudaGraphNodeTypeWaitEvent:
            return "event wait";
        case cudaGraphNodeTypeEmpty:
            return "empty";
        case cudaGraphNodeTypeGraph:
            return "child graph";
        default:
            return "other";
    }
}
#endif

// A host-to-device copy that does not wait for the device (pinned staging) on CUDA.
at::Tensor upload(const at::Tensor& t, c10::Device device) {
    if (!device.is_cuda()) return t;
    return t.pin_memory().to(device, /*non_blocking=*/true);
}

class Engine {
public:
    Engine(const dsa::Model& model,
           const text::Tokenizer& tok,
           const std::vector<GenerationRequest>& requests,
           const GenerateOptions& opt,
           GenerationStats& stats)
        : model_(model),
          cfg_(model.config()),
          tok_(tok),
          opt_(opt),
          stats_(stats),
          device_(model.device()),
          bs_(opt.engine.block_size),
          pool_(engine_cache_blocks(model, requests, opt)),
          cache_(model.new_paged_cache(pool_.total() + 1, bs_)),
          lock_(model),
          sync_interval_(opt.engine.sync_interval > 0 ? opt.engine.sync_interval : (device_.is_cuda() ? 8 : 1)),
          // Kept sets smaller than the vocabulary come from the device; otherwise every one is "all".
          record_masks_(opt.record_kept && (opt.sampling.greedy() || truncates(opt.sampling, cfg_.vocab_size))),
          // Collectives of expert parallelism run between the kernels: such steps are launched one by one.
          use_graphs_(device_.is_cuda() && opt.engine.cuda_graphs && model.expert_parallel() == nullptr),
          bucketed_(use_graphs_ || opt.engine.eager_buckets) {
        seqs_.resize(requests.size());
        for (size_t i = 0; i < requests.size(); ++i) {
            const GenerationRequest& r = requests[i];
            Seq& q = seqs_[i];
            q.req = &r;
            q.gen = rng::make_cpu_generator(r.seed);
            q.sample = start_sample(r, opt, cfg_);
            stats_.prompt_tokens += static_cast<int64_t>(r.prompt.size());
        }
        // Consecutive requests of one prompt form a group (admitted together, prefilled once).
        for (size_t i = 0; i < seqs_.size();) {
            Pending p;
            size_t j = i;
            while (j < seqs_.size() && (j == i || (seqs_[j].req->prompt_id == seqs_[i].req->prompt_id &&
                                                   seqs_[j].req->prompt == seqs_[i].req->prompt))) {
                p.seqs.push_back(&seqs_[j]);
                ++j;
            }
            waiting_.push_back(std::move(p));
            i = j;
        }
    }

    std::vector<Sample> run() {
        const auto t0 = Clock::now();
        double last_log = 0;
        int64_t done = 0;
        while (!waiting_.empty() || !running_.empty()) {
            admit();
            if (running_.empty()) continue;
            const int64_t steps = reserve_window();
            if (steps == 0) continue;  // evicted to make room: admit again
            decode_window(steps);
            done += flush();
            const double secs = seconds_since(t0);
            if (seqs_.size() > static_cast<size_t>(opt_.max_batch_size) && (secs - last_log >= 10.0)) {
                last_log = secs;
                DSRL_LOG(info) << absl::StrFormat(
                    "rollout: %d/%d sequences, %d running, %d tokens generated, %.0f tok/s, cache %d/%d blocks", done,
                    seqs_.size(), running_.size(), stats_.generated_tokens, stats_.generated_tokens / secs,
                    pool_.used(), pool_.total());
            }
        }
        lock_.finish();
        if (stats_.preemptions > 0) {
            DSRL_LOG(warn) << "rollout: " << stats_.preemptions << " sequence(s) evicted from a full cache of "
                           << pool_.total() << " blocks and recomputed (the records are unchanged, the "
                           << "time is not); raise rollout.cache_blocks or rollout.cache_memory_fraction, or lower "
                           << "rollout.max_batch_size";
        }
        wait_for_records();
        std::vector<Sample> out;
        out.reserve(seqs_.size());
        for (Seq& q : seqs_) out.push_back(finalize(q));
        return out;
    }

private:
    // Positions a sequence may still feed before a host-known limit ends it (length, forced ids, context).
    int64_t steps_left(const Seq& q) const {
        int64_t left = std::min(opt_.max_new_tokens, cfg_.max_position_embeddings - 1) - q.generated();
        left = std::min(left, cfg_.max_position_embeddings - q.num_tokens());
        if (!q.req->forced.empty()) left = std::min(left, static_cast<int64_t>(q.req->forced.size()) - q.generated());
        return left;
    }

    int64_t tokens_in_flight() const {
        int64_t n = 0;
        for (const Seq* q : running_) n += q->num_tokens();
        return n;
    }

    // Admits waiting groups in order while the batch, the token budget and the pool allow; prefills them together.
    void admit() {
        std::vector<Pending> batch;
        int64_t rows = static_cast<int64_t>(running_.size());
        int64_t in_flight = tokens_in_flight();
        // Blocks kept back for the running rows' next step, so that an admission never forces an eviction.
        int64_t available = pool_.free() - blocks_needed(1);
        while (!waiting_.empty()) {
            const Pending& p = waiting_.front();
            const int64_t n = static_cast<int64_t>(p.seqs.size());
            const int64_t len = p.length();
            const bool alone = rows == 0;  // an empty batch takes any group, even one larger than the limits
            // The prompt's blocks plus one per sample for its first decode step (or its copy on write); alone, one.
            const int64_t need = ceil_div(len, bs_) + (alone ? 1 : n);
            if (!alone && rows + n > opt_.max_batch_size) break;
            if (!alone && opt_.engine.max_tokens_in_flight > 0 &&
                in_flight + n * len > opt_.engine.max_tokens_in_flight)
                break;
            if (need > available) {
                DSRL_INTERNAL_ASSERT(!alone, "rollout engine: an empty cache cannot hold one sequence");
                break;
            }
            available -= need;
            rows += n;
            in_flight += n * len;
            batch.push_back(waiting_.front());
            waiting_.pop_front();
        }
        if (!batch.empty()) prefill(batch);
    }

    // One forward over the admitted groups' tokens (right-padded); each group's samples then share its blocks.
    void prefill(std::vector<Pending>& batch) {
        RECORD_USER_SCOPE(kPrefillScope);
        const auto t0 = Clock::now();
        ++stats_.prefill_calls;
        const int64_t n = static_cast<int64_t>(batch.size());
        std::vector<std::vector<int32_t>> tokens(static_cast<size_t>(n));
        int64_t width = 0;
        for (int64_t i = 0; i < n; ++i) {
            tokens[i] = batch[i].tokens();
            width = std::max<int64_t>(width, static_cast<int64_t>(tokens[i].size()));
        }
        at::Tensor ids = at::full({n, width}, tok_.pad_id(), at::kLong);
        at::Tensor mask = at::zeros({n, width}, at::kLong);
        at::Tensor slots = at::zeros({n, width}, at::kLong);  // padding writes to the scratch block 0
        int64_t* pid = ids.data_ptr<int64_t>();
        int64_t* pm = mask.data_ptr<int64_t>();
        int64_t* ps = slots.data_ptr<int64_t>();
        for (int64_t i = 0; i < n; ++i) {
            Seq& owner = *batch[i].seqs[0];
            const int64_t len = static_cast<int64_t>(tokens[i].size());
            DSRL_INTERNAL_ASSERT(owner.blocks.empty(), "rollout engine: prefill of a sequence holding blocks");
            for (int64_t b = 0; b < ceil_div(len, bs_); ++b) owner.blocks.push_back(pool_.alloc());
            for (int64_t t = 0; t < len; ++t) {
                pid[i * width + t] = tokens[i][t];
                pm[i * width + t] = 1;
                ps[i * width + t] = owner.blocks[t / bs_] * bs_ + t % bs_;
            }
            stats_.prefill_tokens += len;
        }
        const dsa::PagedStep step{.cache = &cache_, .write_slots = upload(slots, device_)};
        const dsa::ForwardOptions fopt{.return_logits = false,
                                       .return_hidden = true,
                                       .return_routes = opt_.record_routes,
                                       .return_topk = opt_.record_indexer,
                                       .paged = &step,
                                       .check_ids = false};
        lock_.step();
        const dsa::ForwardOutput out = model_.forward({upload(ids, device_), upload(mask, device_)}, fopt);
        // The logits of each row's last token only.
        std::vector<int64_t> last(static_cast<size_t>(n));
        for (int64_t i = 0; i < n; ++i) last[i] = i * width + static_cast<int64_t>(tokens[i].size()) - 1;
        const at::Tensor last_idx = upload(at::tensor(last, at::kLong), device_);
        const at::Tensor logits = model_.logits(out.hidden.reshape({n * width, -1}).index_select(0, last_idx));
        std::vector<at::Tensor> routes, topk;
        for (const at::Tensor& r : out.routes) routes.push_back(r.to(at::kCPU, at::kLong).contiguous());
        for (const at::Tensor& t : out.topk) topk.push_back(t.to(at::kCPU, at::kInt).contiguous());
        std::vector<at::Tensor> new_logits;
        for (int64_t i = 0; i < n; ++i) {
            Pending& p = batch[i];
            const int64_t len = static_cast<int64_t>(tokens[i].size());
            Seq& owner = *p.seqs[0];
            for (size_t g = 0; g < p.seqs.size(); ++g) {
                Seq& q = *p.seqs[g];
                if (g > 0) {
                    q.blocks = owner.blocks;
                    for (const int32_t b : q.blocks) pool_.share(b);
                }
                q.cached = len;
                q.admitted = next_admission_++;
                if (!p.recompute) {  // a recomputation's positions were all recorded when they were fed
                    q.routes.resize(routes.size());
                    for (size_t j = 0; j < routes.size(); ++j) append_rows<int64_t>(q.routes[j], routes[j], i, len);
                    q.topk.resize(topk.size());
                    for (size_t j = 0; j < topk.size(); ++j) append_rows<int32_t>(q.topk[j], topk[j], i, len);
                }
                running_.push_back(&q);
                new_logits.push_back(logits.narrow(0, i, 1));
            }
        }
        const at::Tensor added = at::cat(new_logits, 0);
        last_logits_ = last_logits_.defined() ? at::cat({last_logits_, added}, 0) : added;
        stats_.peak_cache_blocks = std::max(stats_.peak_cache_blocks, pool_.used());
        stats_.prefill_seconds += seconds_since(t0);
    }

    // New blocks the running rows need for `w` more positions each (copies on write included).
    int64_t blocks_needed(int64_t w) const {
        int64_t need = 0;
        for (const Seq* q : running_) {
            need += std::max<int64_t>(0, ceil_div(q->cached + w, bs_) - static_cast<int64_t>(q->blocks.size()));
            if (q->cached % bs_ != 0 && pool_.refs(q->blocks.back()) > 1) ++need;  // copy on write
        }
        return need;
    }

    // Blocks for the next window's writes (copying a shared block before the first write into it); evicts the
    // latest-admitted sequences when the pool cannot give even one step to every row. Returns the window's steps
    // (0 when it evicted: the caller admits again).
    int64_t reserve_window() {
        int64_t steps = sync_interval_;
        for (const Seq* q : running_) steps = std::min(steps, steps_left(*q));
        DSRL_INTERNAL_ASSERT(steps >= 1, "rollout engine: a running sequence has no step left");
        while (steps > 1 && blocks_needed(steps) > pool_.free()) steps = steps / 2;
        if (blocks_needed(steps) > pool_.free()) {
            // Evict until one step fits for the rest (never the last sequence: one always fits an empty pool).
            while (running_.size() > 1 && blocks_needed(1) > pool_.free()) evict_latest();
            return 0;
        }
        for (Seq* q : running_) {
            if (q->cached % bs_ != 0 && pool_.refs(q->blocks.back()) > 1) {
                const int32_t from = q->blocks.back();
                const int32_t to = pool_.alloc();
                cache_.copy_slots(int64_t{from} * bs_, int64_t{to} * bs_, q->cached % bs_);
                pool_.release(from);
                q->blocks.back() = to;
            }
            while (static_cast<int64_t>(q->blocks.size()) < ceil_div(q->cached + steps, bs_))
                q->blocks.push_back(pool_.alloc());
        }
        stats_.peak_cache_blocks = std::max(stats_.peak_cache_blocks, pool_.used());
        return steps;
    }

    void evict_latest() {
        size_t victim = 0;
        for (size_t i = 1; i < running_.size(); ++i) {
            if (running_[i]->admitted > running_[victim]->admitted) victim = i;
        }
        Seq* q = running_[victim];
        for (const int32_t b : q->blocks) pool_.release(b);
        q->blocks.clear();
        q->cached = 0;
        remove_rows({static_cast<int64_t>(victim)});
        waiting_.push_front(Pending{{q}, /*recompute=*/true});
        ++stats_.preemptions;
    }

    // Keeps every running row but `drop` (indices into running_), with their logits.
    void remove_rows(const std::vector<int64_t>& drop) {
        std::vector<bool> dropped(running_.size(), false);
        for (const int64_t i : drop) dropped[static_cast<size_t>(i)] = true;
        std::vector<Seq*> keep_seqs;
        std::vector<int64_t> keep;
        for (size_t i = 0; i < running_.size(); ++i) {
            if (dropped[i]) continue;
            keep.push_back(static_cast<int64_t>(i));
            keep_seqs.push_back(running_[i]);
        }
        running_ = std::move(keep_seqs);
        last_logits_ =
            keep.empty() ? at::Tensor() : last_logits_.index_select(0, at::tensor(keep, at::kLong).to(device_));
    }

    // One decode step's inputs: the rows' next-token logits, their uniforms, forced ids (−1: none; undefined: no row
    // has any), block tables, positions, and the number of key slots read per row (keys past a row's position are
    // masked, so any count covering the longest row gives the same records).
    struct StepIn {
        at::Tensor logits;   // [R, V] fp32
        at::Tensor uniform;  // [R, 1] double (a windowed step: its Window's)
        at::Tensor forced;   // [R] int64 (a windowed step: its Window's)
        at::Tensor table;    // [R, NB] int64 block ids
        at::Tensor pos;      // [R] int64 position of the fed token
        int64_t keys = 0;
    };
    // Its outputs: the sampled tokens with their log-probs, kept-set bitmaps, routes and indexer sets, and the next
    // logits.
    struct StepOut {
        at::Tensor tokens, logp, kept, routes, topk, logits;
    };

    // A bucket's window of steps on the device: its inputs and records as arrays of `capacity` slots (the sync
    // interval), row r's slot in a step being (pos[r] − base[r]) mod capacity. A windowed step reads its uniform and
    // forced id at its slot, writes its records there, leaves the next logits in StepIn::logits and moves the positions
    // on — the graph's replays then need nothing launched between them.
    struct Window {
        at::Tensor base;     // [R] int64: the positions of the window's first step
        at::Tensor uniform;  // [C, R, 1] fp64
        at::Tensor forced;   // [C, R] int64 (−1: sample)
        at::Tensor tokens;   // [C, R] int64
        at::Tensor logp;     // [C, R] fp32
        at::Tensor kept;     // [C, R, ceil(V / 8)] uint8 (record_masks_)
        at::Tensor routes;   // [C, R, M, k] (record_routes, allocated by the first step)
        at::Tensor topk;     // [C, R, Ly, K] (record_indexer, allocated by the first step)
        int64_t capacity() const { return uniform.size(0); }
    };

    // Samples every row from its uniform and feeds the tokens: the whole step on the device, no host sync (so it can be
    // captured in a CUDA graph).
    StepOut decode_step(const StepIn& in, Window* w = nullptr) {
        StepOut out;
        bool sampled = false;
        at::Tensor slot;  // without the kernels, a windowed step's slot ([1] int64; every row's is the same)
        const auto window_slot = [&] {
            if (!slot.defined()) slot = (in.pos.narrow(0, 0, 1) - w->base.narrow(0, 0, 1)).remainder(w->capacity());
            return slot;
        };
#ifdef DSRL_WITH_CUDA
        if (cfg_.impl != Impl::kReference && cuda::sample_kernel_fits(in.logits)) {  // one kernel for the lines below
            if (w != nullptr) {
                out.tokens =
                    cuda::sample(
                        in.logits, w->uniform, w->forced, opt_.sampling,
                        {.pos = in.pos, .base = w->base, .tokens = w->tokens, .logp = w->logp, .kept = w->kept})
                        .tokens;
            } else {
                const cuda::Sampled s = cuda::sample(in.logits, in.uniform.contiguous(),
                                                     in.forced.defined() ? in.forced.contiguous() : at::Tensor(),
                                                     opt_.sampling, record_masks_);
                out.tokens = s.tokens;
                out.logp = s.logp;
                out.kept = s.kept;
            }
            sampled = true;
        }
#endif
        if (!sampled) {
            const at::Tensor uniform = w != nullptr ? w->uniform.index_select(0, window_slot()).squeeze(0) : in.uniform;
            const at::Tensor forced = w != nullptr ? w->forced.index_select(0, window_slot()).squeeze(0) : in.forced;
            const at::Tensor logp = processed_logprobs(in.logits, opt_.sampling);
            out.tokens = sample_with_uniforms(logp, uniform);
            if (forced.defined()) out.tokens = at::where(forced >= 0, forced, out.tokens);
            out.logp = logp.gather(1, out.tokens.unsqueeze(1)).squeeze(1);
            if (record_masks_) out.kept = pack_mask_bits(logp.isfinite());  // [R, ceil(V / 8)]
            if (w != nullptr) {
                w->tokens.index_copy_(0, window_slot(), out.tokens.unsqueeze(0));
                w->logp.index_copy_(0, window_slot(), out.logp.unsqueeze(0));
                if (record_masks_) w->kept.index_copy_(0, window_slot(), out.kept.unsqueeze(0));
                out.logp = out.kept = at::Tensor();
            }
        }
        // Feed them: position pos of each row, keys 0..keys through the block table (slots, key mask and rotary
        // factors in one kernel on CUDA).
        const dsa::PagedStep step = model_.paged_decode_step(cache_, in.table, in.pos, in.keys);
        // On CUDA the MoE layers run densely over the experts (a fixed handful of kernels, no host sync).
        const dsa::ForwardOptions fopt{.return_routes = opt_.record_routes,
                                       .return_topk = opt_.record_indexer,
                                       .paged = &step,
                                       .check_ids = false,
                                       .moe_dense = device_.is_cuda(),
                                       .logits_out = w != nullptr ? in.logits : at::Tensor()};
        lock_.step();
        const dsa::ForwardOutput f =
            model_.forward({.input_ids = out.tokens.unsqueeze(1), .position_ids = in.pos.unsqueeze(1)}, fopt);
        if (w == nullptr) {
            if (!f.routes.empty()) out.routes = at::stack(f.routes, 1).select(2, 0);  // [R, M, k]
            if (!f.topk.empty()) out.topk = at::stack(f.topk, 1).select(2, 0);        // [R, Ly, K]
            out.logits = f.logits.select(1, 0);
            return out;
        }
        // The window's routes and indexer sets at the step's slot (each [C, R, layers, k], allocated by the first
        // step), and the positions moved on.
        for (auto [from, to] : {std::pair{&f.routes, &w->routes}, std::pair{&f.topk, &w->topk}}) {
            if (!from->empty() && !to->defined()) {
                const at::Tensor& t = from->front();
                *to =
                    at::empty({w->capacity(), t.size(0), static_cast<int64_t>(from->size()), t.size(-1)}, t.options());
            }
        }
        bool recorded = false;
#ifdef DSRL_WITH_CUDA
        recorded = cfg_.impl != Impl::kReference && device_.is_cuda() &&
                   cuda::step_records(f.routes, w->routes, f.topk, w->topk, in.pos, w->base);
#endif
        if (!recorded) {
            for (auto [from, to] : {std::pair{&f.routes, &w->routes}, std::pair{&f.topk, &w->topk}}) {
                if (!from->empty()) to->index_copy_(0, window_slot(), at::stack(*from, 1).select(2, 0).unsqueeze(0));
            }
            in.pos.add_(1);
        }
        out.logits = in.logits;
        return out;
    }

    void clear_window_records() {
        for (std::vector<at::Tensor>* v : {&win_tokens_, &win_logp_, &win_kept_, &win_routes_, &win_topk_}) v->clear();
    }

    // Keeps records of the window's flush: steps × rows of each (a step's outputs, or the window's slots), concatenated
    // over the steps there.
    void keep_records(const StepOut& out) {
        const auto keep = [&](std::vector<at::Tensor>& to, const at::Tensor& t) {
            if (t.defined()) to.push_back(t);
        };
        keep(win_tokens_, out.tokens);
        keep(win_logp_, out.logp);
        keep(win_kept_, out.kept);
        keep(win_routes_, out.routes);
        keep(win_topk_, out.topk);
    }

    // `steps` decode steps over the running rows, the records kept on the device. With graphs the rows and block-table
    // width are padded to a bucket (powers of two) whose captured step is replayed.
    void decode_window(int64_t steps) {
        const auto t0 = Clock::now();
        const int64_t rows = static_cast<int64_t>(running_.size());
        int64_t max_blocks = 0;
        for (const Seq* q : running_)
            max_blocks = std::max<int64_t>(max_blocks, static_cast<int64_t>(q->blocks.size()));
        const int64_t padded = bucketed_ ? bucket(rows, opt_.max_batch_size) : rows;
        const int64_t width = bucketed_ ? bucket(max_blocks, std::numeric_limits<int64_t>::max()) : max_blocks;
        // The block tables and positions, uploaded once per window; slots are computed on the device per step. Padded
        // rows read and write the scratch block 0 at position 0.
        at::Tensor table = at::zeros({padded, width}, at::kLong);
        at::Tensor start = at::zeros({padded}, at::kLong);
        std::vector<int64_t> forced(static_cast<size_t>(padded * steps), -1);
        bool any_forced = false;
        int64_t longest = 0;
        for (int64_t i = 0; i < rows; ++i) {
            const Seq& q = *running_[i];
            std::copy(q.blocks.begin(), q.blocks.end(), table.data_ptr<int64_t>() + i * width);
            start.data_ptr<int64_t>()[i] = q.cached;
            longest = std::max(longest, q.cached);
            const std::vector<int32_t>& f = q.req->forced;
            for (int64_t s = 0; s < steps; ++s) {
                const int64_t t = q.generated() + s;
                if (t < static_cast<int64_t>(f.size())) {
                    forced[i * steps + s] = f[t];
                    any_forced = true;
                }
            }
        }
        table = upload(table, device_);
        start = upload(start, device_);
        const at::Tensor forced_dev =
            any_forced ? upload(at::tensor(forced, at::kLong).view({padded, steps}), device_) : at::Tensor();
        // Every row's uniforms for the window, drawn from its own generator in step order (padded rows: 0.5).
        std::vector<at::Generator> gens;
        for (Seq* q : running_) gens.push_back(q->gen);
        std::vector<at::Tensor> draws;
        for (int64_t s = 0; s < steps; ++s) {
            at::Tensor u = draw_uniforms(gens);
            if (padded > rows) u = at::cat({u, at::full({padded - rows, 1}, 0.5, u.options())}, 0);
            draws.push_back(u);
        }
        const at::Tensor uniforms = upload(at::stack(draws, 0), device_);  // [steps, R, 1]
        stats_.setup_seconds += seconds_since(t0);
        const auto t_launch = Clock::now();
        const double captured = stats_.capture_seconds;  // a first use's capture counts there, not in launch_seconds
        clear_window_records();
        if (bucketed_) {
            Graph& g = graph(padded, width);
            Window& w = g.win;
            g.in.table.copy_(table, /*non_blocking=*/true);
            g.in.pos.copy_(start, /*non_blocking=*/true);
            w.base.copy_(g.in.pos);
            g.in.logits.narrow(0, 0, rows).copy_(last_logits_);
            w.uniform.narrow(0, 0, steps).copy_(uniforms);
            if (any_forced) {
                w.forced.narrow(0, 0, steps).copy_(forced_dev.t());
            } else {
                w.forced.fill_(-1);
            }
            window_begin();
            for (int64_t s = 0; s < steps; ++s) {
                RECORD_USER_SCOPE(kDecodeScope);
                bucket_step(g);
            }
            window_end();
            // The records stay in the window's slots until the flush copies them to the host.
            const auto slots = [&](const at::Tensor& t) {
                return t.defined() ? t.narrow(0, 0, steps).narrow(1, 0, rows) : at::Tensor();
            };
            keep_records({.tokens = slots(w.tokens),
                          .logp = slots(w.logp),
                          .kept = slots(w.kept),
                          .routes = slots(w.routes),
                          .topk = slots(w.topk)});
            last_logits_ = g.in.logits.narrow(0, 0, rows).clone();
            stats_.padded_row_steps += (padded - rows) * steps;
        } else {
            window_begin();
            for (int64_t s = 0; s < steps; ++s) {
                RECORD_USER_SCOPE(kDecodeScope);
                const StepOut out = decode_step({.logits = last_logits_,
                                                 .uniform = uniforms[s],
                                                 .forced = any_forced ? forced_dev.select(1, s) : at::Tensor(),
                                                 .table = table,
                                                 .pos = start + s,
                                                 .keys = longest + s + 1});
                keep_records({.tokens = out.tokens.unsqueeze(0),
                              .logp = out.logp.unsqueeze(0),
                              .kept = out.kept.defined() ? out.kept.unsqueeze(0) : at::Tensor(),
                              .routes = out.routes.defined() ? out.routes.unsqueeze(0) : at::Tensor(),
                              .topk = out.topk.defined() ? out.topk.unsqueeze(0) : at::Tensor()});
                last_logits_ = out.logits;
            }
            window_end();
        }
        stats_.launch_seconds += seconds_since(t_launch) - (stats_.capture_seconds - captured);
        stats_.decode_steps += steps;
        stats_.decode_row_steps += rows * steps;
        for (Seq* q : running_) q->cached += steps;
        window_steps_ = steps;
        stats_.decode_seconds += seconds_since(t0);
    }

    // The smallest power of two >= n, at most `cap` (>= n).
    static int64_t bucket(int64_t n, int64_t cap) {
        int64_t b = 1;
        while (b < n) b *= 2;
        return std::max(n, std::min(b, cap));
    }

    // A decode step captured for `rows` rows and block tables `width` blocks wide: static input buffers, and the
    // outputs the graph writes on every replay.
    struct Graph {
        StepIn in;
        Window win;
#ifdef DSRL_WITH_CUDA
        std::unique_ptr<at::cuda::CUDAGraph> graph;
#else
        struct NoGraph {
            void replay() { DSRL_INTERNAL_ASSERT(false, "rollout engine: CUDA graphs in a build without CUDA"); }
        };
        std::unique_ptr<NoGraph> graph;
#endif
    };

    // One step of a bucket: the graph replayed (or the windowed step run eagerly: CPU tests). The step reads its
    // inputs from the window, writes its records and next logits in place and moves the positions on.
    void bucket_step(Graph& g) {
        if (g.graph) {
            g.graph->replay();
        } else {
            decode_step(g.in, &g.win);
        }
    }

#ifdef DSRL_WITH_CUDA
    // Ends a capture an op broke (its graph discarded) so the stream and the device stay usable for the error's
    // report; the sticky capture error is cleared.
    static void abandon_capture(const c10::cuda::CUDAStream& stream) {
        cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
        if (cudaStreamIsCapturing(stream, &status) == cudaSuccess && status != cudaStreamCaptureStatusNone) {
            cudaGraph_t broken = nullptr;
            if (cudaStreamEndCapture(stream, &broken) == cudaSuccess && broken != nullptr) cudaGraphDestroy(broken);
        }
        (void)cudaGetLastError();
    }
#endif

    // CUDA events around a window's steps, read at its flush (GenerationStats::device_decode_seconds).
    void window_begin() {
#ifdef DSRL_WITH_CUDA
        if (device_.is_cuda()) window_events_.first.record();
#endif
    }
    void window_end() {
#ifdef DSRL_WITH_CUDA
        if (device_.is_cuda()) window_events_.second.record();
#endif
    }

    // The bucket's graph, captured on first use: an eager warm-up step on a side stream (lazy initializations stay out
    // of the graph), then the capture. Padded rows and the warm-up write only to the scratch block. The graphs share
    // one memory pool; autocast's cast cache is off while capturing, so the graph casts the live weights on each
    // replay.
    Graph& graph(int64_t rows, int64_t width) {
        auto it = graphs_.find({rows, width});
        if (it != graphs_.end()) return it->second;
        const auto t0 = Clock::now();
        Graph& g = graphs_[{rows, width}];
        const auto opts = at::TensorOptions().device(device_);
        // The step's uniforms and forced ids come from the window (StepIn's stay undefined).
        g.in = {.logits = at::zeros({rows, cfg_.vocab_size}, opts.dtype(at::kFloat)),
                .table = at::zeros({rows, width}, opts.dtype(at::kLong)),
                .pos = at::zeros({rows}, opts.dtype(at::kLong)),
                .keys = width * bs_};
        const int64_t slots = sync_interval_;
        g.win = {.base = at::zeros({rows}, opts.dtype(at::kLong)),
                 .uniform = at::full({slots, rows, 1}, 0.5, opts.dtype(at::kDouble)),
                 .forced = at::full({slots, rows}, -1, opts.dtype(at::kLong)),
                 .tokens = at::zeros({slots, rows}, opts.dtype(at::kLong)),
                 .logp = at::zeros({slots, rows}, opts.dtype(at::kFloat)),
                 .kept = record_masks_ ? at::zeros({slots, rows, (cfg_.vocab_size + 7) / 8}, opts.dtype(at::kByte))
                                       : at::Tensor()};
        if (!use_graphs_) return g;
#ifdef DSRL_WITH_CUDA
        const bool cast_cache = at::autocast::is_autocast_cache_enabled();
        at::autocast::set_autocast_cache_enabled(false);
        if (graph_pool_.first == 0 && graph_pool_.second == 0) graph_pool_ = at::cuda::graph_pool_handle();
        c10::cuda::device_synchronize();
        const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool(/*isHighPriority=*/false, device_.index());
        {
            const c10::cuda::CUDAStreamGuard on_side(side);
            decode_step(g.in, &g.win);  // allocates the window's routes and indexer sets
            side.synchronize();
            g.graph = std::make_unique<at::cuda::CUDAGraph>(/*keep_graph=*/true);
            g.graph->capture_begin(graph_pool_);
            const auto fail = [&](const char* what) {
                abandon_capture(side);
                graphs_.erase({rows, width});
                at::autocast::set_autocast_cache_enabled(cast_cache);
                throw std::runtime_error(absl::StrCat(
                    "rollout: the decode step of ", rows,
                    " rows could not be captured in a CUDA graph (an op of this "
                    "model synchronizes with the host; rollout.cuda_graphs: false runs the steps without graphs): ",
                    what));
            };
            try {
                decode_step(g.in, &g.win);
            } catch (const c10::Error& e) {
                fail(e.what_without_backtrace());
            } catch (const std::exception& e) {
                fail(e.what());
            }
            g.graph->capture_end();
            size_t nodes = 0;  // the kernels (and copies) one replay runs
            C10_CUDA_CHECK(cudaGraphGetNodes(g.graph->raw_cuda_graph(), nullptr, &nodes));
            std::vector<cudaGraphNode_t> all(nodes);
            C10_CUDA_CHECK(cudaGraphGetNodes(g.graph->raw_cuda_graph(), all.data(), &nodes));
            std::map<std::string, int64_t> kinds;
            for (const cudaGraphNode_t n : all) {
                cudaGraphNodeType type{};
                C10_CUDA_CHECK(cudaGraphNodeGetType(n, &type));
                ++kinds[graph_node_kind(type)];
            }
            if (static_cast<int64_t>(nodes) > stats_.graph_nodes) {
                stats_.graph_nodes = static_cast<int64_t>(nodes);
                std::string text;
                for (const auto& [kind, count] : kinds)
                    absl::StrAppend(&text, text.empty() ? "" : ", ", count, " ", kind);
                stats_.graph_node_kinds = text;
            }
            g.graph->instantiate();
        }
        c10::cuda::device_synchronize();
        if (opt_.engine.probe_replays > 0 && static_cast<int64_t>(rows) * width >= probed_) probe(g, rows);
        at::autocast::set_autocast_cache_enabled(cast_cache);
#endif
        ++stats_.graphs_captured;
        stats_.capture_seconds += seconds_since(t0);
        DSRL_LOG(debug) << "rollout engine: captured the decode step for " << rows << " rows x " << width
                        << " blocks in " << seconds_since(t0) << " s";
        return g;
    }

#ifdef DSRL_WITH_CUDA
    // Times opt.engine.probe_replays back-to-back replays of a just-captured graph — a window's whole step, since the
    // graph reads its inputs from the window and moves the positions on. Its inputs still point every row at the
    // scratch block, so the replays write nothing a sequence reads; the positions must stay inside the block table.
    void probe(Graph& g, int64_t rows) {
        probed_ = rows * g.in.table.size(1);
        const int64_t n = opt_.engine.probe_replays;
        if (n + 1 < g.in.table.size(1) * bs_) {
            g.in.pos.zero_();
            g.win.base.zero_();
            at::cuda::CUDAEvent a(cudaEventDefault), b(cudaEventDefault);
            g.graph->replay();  // once untimed (the first launch uploads the graph)
            a.record();
            for (int64_t i = 0; i < n; ++i) g.graph->replay();
            b.record();
            b.synchronize();
            stats_.graph_replay_us = 1e3 * static_cast<double>(a.elapsed_time(b)) / static_cast<double>(n);
        }
        g.in.pos.zero_();
        g.in.logits.zero_();
        c10::cuda::device_synchronize();
    }
#endif

    // Copies the window's tokens and records to the host (the one sync), appends them to the samples, and removes
    // the finished rows. Returns the number that finished.
    int64_t flush() {
        const auto t0 = Clock::now();
        const int64_t rows = static_cast<int64_t>(running_.size());
        const int64_t steps = window_steps_;
        // Every record copied into pinned host memory without a sync between, then one wait for the stream.
        const auto to_host = [&](const std::vector<at::Tensor>& parts, std::optional<at::ScalarType> type) {
            if (parts.empty()) return at::Tensor();
            at::Tensor t = at::cat(parts, 0);
            if (type) t = t.to(*type);
            if (!device_.is_cuda()) return t.contiguous();
            at::Tensor host = at::empty(t.sizes(), t.options().device(at::kCPU).pinned_memory(true));
            host.copy_(t, /*non_blocking=*/true);
            return host;
        };
        const at::Tensor tokens = to_host(win_tokens_, std::nullopt);  // [S, R]
        const at::Tensor logp = to_host(win_logp_, std::nullopt);
        const at::Tensor kept = record_masks_ ? to_host(win_kept_, std::nullopt) : at::Tensor();  // [S, R, V/8] bits
        const at::Tensor routes = to_host(win_routes_, at::kLong);
        const at::Tensor topk = to_host(win_topk_, at::kInt);
#ifdef DSRL_WITH_CUDA
        if (device_.is_cuda()) c10::cuda::getCurrentCUDAStream(device_.index()).synchronize();
#endif
        stats_.wait_seconds += seconds_since(t0);
#ifdef DSRL_WITH_CUDA
        if (device_.is_cuda()) {
            stats_.device_decode_seconds +=
                1e-3 * static_cast<double>(window_events_.first.elapsed_time(window_events_.second));
        }
#endif
        const auto t_records = Clock::now();
        const int64_t* ptok = tokens.data_ptr<int64_t>();
        const float* plp = logp.data_ptr<float>();
        // Tokens, log-probs and the finish checks here: the next window's rows depend on them. The kept sets, routes
        // and indexer sets go to a background task that appends them while the device runs the next window.
        std::vector<std::pair<Seq*, int64_t>> taken;  // each row's sequence and the window steps it accepted
        std::vector<int64_t> finished;
        for (int64_t i = 0; i < rows; ++i) {
            Seq& q = *running_[i];
            int64_t n = 0;
            for (int64_t s = 0; s < steps; ++s) {
                if (q.finished) {
                    ++stats_.wasted_row_steps;
                    continue;
                }
                Sample& sm = q.sample;
                const int64_t token = ptok[s * rows + i];
                sm.response.push_back(static_cast<int32_t>(token));
                sm.logprobs.push_back(plp[s * rows + i]);
                ++n;
                if (finish_sample(sm, token, tok_, *q.req, opt_, cfg_.max_position_embeddings)) q.finished = true;
            }
            taken.emplace_back(&q, n);  // a row's accepted steps are the window's first n
            if (q.finished) finished.push_back(i);
        }
        if (opt_.record_kept || routes.defined() || topk.defined()) {
            append_records_later([rows, taken = std::move(taken), kept, routes, topk, masks = record_masks_,
                                  record_kept = opt_.record_kept, vocab = cfg_.vocab_size] {
                for (size_t i = 0; i < taken.size(); ++i) {
                    Seq& q = *taken[i].first;
                    for (int64_t s = 0; s < taken[i].second; ++s) {
                        const int64_t at_row = s * rows + static_cast<int64_t>(i);
                        if (record_kept) {
                            q.sample.kept.push_back(
                                masks ? KeptSet::from_bitmap(kept.data_ptr<uint8_t>() + at_row * kept.size(2), vocab)
                                      : KeptSet::all(vocab));
                        }
                        if (routes.defined()) {  // [S, R, M, k] int64
                            const int64_t m = routes.size(2), k = routes.size(3);
                            append_layers(q.routes, routes.data_ptr<int64_t>() + at_row * m * k, m, k);
                        }
                        if (topk.defined()) {  // [S, R, Ly, K] int32
                            const int64_t ly = topk.size(2), k = topk.size(3);
                            append_layers(q.topk, topk.data_ptr<int32_t>() + at_row * ly * k, ly, k);
                        }
                    }
                }
            });
        }
        for (const int64_t i : finished) {
            Seq& q = *running_[i];
            for (const int32_t b : q.blocks) pool_.release(b);
            q.blocks.clear();
            stats_.generated_tokens += q.generated();
        }
        if (!finished.empty()) remove_rows(finished);
        stats_.record_seconds += seconds_since(t_records);
        stats_.decode_seconds += seconds_since(t0);
        return static_cast<int64_t>(finished.size());
    }

    // Runs `append` on a background thread after every earlier such task (so each sequence's records stay in window
    // order). It touches only the sequences' kept sets, routes and indexer sets, which nothing else reads or writes
    // until wait_for_records(); an exception in it is rethrown there.
    void append_records_later(std::function<void()> append) {
        records_ = std::async(std::launch::async, [before = std::move(records_), append = std::move(append)]() mutable {
            if (before.valid()) before.get();
            append();
        });
    }

    void wait_for_records() {
        const auto t0 = Clock::now();
        if (records_.valid()) records_.get();
        stats_.record_seconds += seconds_since(t0);
        stats_.decode_seconds += seconds_since(t0);
    }

    Sample finalize(Seq& q) {
        Sample& s = q.sample;
        const int64_t n = q.num_tokens();
        if (opt_.record_routes) {
            std::vector<at::Tensor> per_layer;
            for (std::vector<int64_t>& ids : q.routes) {
                per_layer.push_back(at::tensor(ids, at::kLong).view({n, -1}));
            }
            s.set_routes(per_layer, cfg_.n_routed_experts);
        }
        if (opt_.record_indexer) {
            std::vector<at::Tensor> per_layer;
            for (std::vector<int32_t>& ids : q.topk) per_layer.push_back(at::tensor(ids, at::kInt).view({n, -1}));
            s.set_indexer(per_layer, cfg_.index_topk);
        }
        return std::move(s);
    }

    const dsa::Model& model_;
    const ModelConfig& cfg_;
    const text::Tokenizer& tok_;
    const GenerateOptions& opt_;
    GenerationStats& stats_;
    const c10::Device device_;
    const int64_t bs_;
    BlockPool pool_;
    dsa::PagedKvCache cache_;
    const dsa::ForwardLockstep lock_;
    const int64_t sync_interval_;
    const bool record_masks_;
    std::vector<Seq> seqs_;
    std::deque<Pending> waiting_;
    std::vector<Seq*> running_;
    at::Tensor last_logits_;  // [running, V] on the device: the next-token logits of each running row
    int64_t next_admission_ = 0;
    int64_t window_steps_ = 0;
    std::vector<at::Tensor> win_tokens_, win_logp_, win_kept_, win_routes_, win_topk_;
    const bool use_graphs_;
    const bool bucketed_;                                  // padded buckets: with graphs, or eagerly on CPU (tests)
    std::map<std::pair<int64_t, int64_t>, Graph> graphs_;  // (rows, block-table width) -> captured step
#ifdef DSRL_WITH_CUDA
    at::cuda::MempoolId_t graph_pool_{0, 0};
    std::pair<at::cuda::CUDAEvent, at::cuda::CUDAEvent> window_events_{cudaEventDefault, cudaEventDefault};
    int64_t probed_ = 0;  // rows x width of the largest graph probed so far
#endif
    // The background task appending the last flushed window's records (append_records_later). Declared last: it is
    // destroyed first, and a std::async future's destructor waits for its task, so no task outlives seqs_.
    std::future<void> records_;
};

}  // namespace

void check_cache_pool_fits(
    int64_t blocks, int64_t block_size, int64_t bytes_per_token, int64_t room, const std::string& where) {
    const double bytes =
        static_cast<double>(blocks) * static_cast<double>(block_size) * static_cast<double>(bytes_per_token);
    if (room <= 0 || bytes <= static_cast<double>(room)) return;
    throw ConfigError(absl::StrFormat(
        "rollout.cache_blocks: %d blocks of %d slots need %.1f GiB, more than %s (%.1f GiB); leave it 0 (sized from "
        "rollout.max_batch_size and rollout.cache_memory_fraction) or lower it",
        blocks, block_size, bytes / (1 << 30), where, static_cast<double>(room) / (1 << 30)));
}

int64_t engine_cache_blocks(const dsa::Model& model,
                            const std::vector<GenerationRequest>& requests,
                            const GenerateOptions& opt) {
    const ModelConfig& cfg = model.config();
    const int64_t bs = opt.engine.block_size;
    TORCH_CHECK(bs >= 1, "rollout engine: block_size must be >= 1, got ", bs);
    int64_t longest = 1;
    for (const GenerationRequest& r : requests)
        longest = std::max<int64_t>(longest, static_cast<int64_t>(r.prompt.size()));
    const int64_t full = std::min(longest + opt.max_new_tokens, cfg.max_position_embeddings);
    const int64_t per_seq = ceil_div(full, bs) + 1;  // + the block a copy on write may take
    const int64_t min_blocks = per_seq + 1;          // one sequence, and the scratch block
    if (opt.engine.cache_blocks > 0) {
        if (opt.engine.cache_blocks < min_blocks) {
            throw ConfigError(absl::StrCat("rollout.cache_blocks: ", opt.engine.cache_blocks, " blocks of ", bs,
                                           " slots cannot hold one sequence of ", full, " tokens (needs ", min_blocks,
                                           ")"));
        }
        // A pool that cannot fit the machine is said here, naming the key (not a bare bad_alloc at its allocation).
        if (model.device().is_cuda()) {
            const auto room = static_cast<int64_t>(
                c10::cuda::CUDACachingAllocator::get()->getMemoryInfo(model.device().index()).second);
            check_cache_pool_fits(opt.engine.cache_blocks, bs, model.cache_bytes_per_token(), room,
                                  "the device's memory");
        } else {
            check_cache_pool_fits(opt.engine.cache_blocks, bs, model.cache_bytes_per_token(), fs::memory_limit_bytes(),
                                  "this machine's memory");
        }
        return opt.engine.cache_blocks;
    }
    const int64_t sequences =
        std::min<int64_t>(std::max<int64_t>(1, static_cast<int64_t>(requests.size())), opt.max_batch_size);
    int64_t blocks = sequences * per_seq + 1;
    if (model.device().is_cuda()) {
        const auto [free, total] = c10::cuda::CUDACachingAllocator::get()->getMemoryInfo(model.device().index());
        (void)total;
        const int64_t block_bytes = model.cache_bytes_per_token() * bs;
        const auto affordable = static_cast<int64_t>(opt.engine.cache_memory_fraction * static_cast<double>(free)) /
                                std::max<int64_t>(block_bytes, 1);
        if (affordable < min_blocks) {
            throw ConfigError(absl::StrCat("rollout.cache_memory_fraction: ", opt.engine.cache_memory_fraction,
                                           " of the free device memory (", free >> 20, " MiB) holds ", affordable,
                                           " cache blocks; one sequence of ", full, " tokens needs ", min_blocks));
        }
        blocks = std::min(blocks, affordable);
    }
    return blocks;
}

std::vector<Sample> generate_continuous(const dsa::Model& model,
                                        const text::Tokenizer& tokenizer,
                                        const std::vector<GenerationRequest>& requests,
                                        const GenerateOptions& opt,
                                        GenerationStats* stats_out) {
    check_requests(model.config(), requests, opt);
    // A one-position window leaves no room to generate: every sample ends at once (the static engine's rule).
    if (std::min(opt.max_new_tokens, model.config().max_position_embeddings - 1) < 1)
        return generate_static(model, tokenizer, requests, opt, stats_out);
    at::NoGradGuard no_grad;
    GenerationStats stats;
    std::vector<Sample> out;
    if (requests.empty()) {
        dsa::ForwardLockstep(model).finish();
        return out;
    }
    Engine engine(model, tokenizer, requests, opt, stats);
    out = engine.run();
    stats.sequences += static_cast<int64_t>(requests.size());
    if (stats_out != nullptr) *stats_out += stats;
    return out;
}

}  // namespace dsrl::rollout
