// The DeepSeek-V3.2 model (SPEC §2): embeddings, decoder layers (MLA + lightning indexer + DSA, then a dense
// SwiGLU MLP or the DeepSeekMoE block), final norm, lm_head. Pure ATen reference path, CPU and GPU,
// differentiable in every weight.
//
//   Model m = Model::load("/models/tiny", job.model, at::kCPU);      // or Model::random(cfg, seed, device)
//   ForwardOutput out = m.forward({.input_ids = ids, .attention_mask = mask}, {.return_routes = true});
//   // out.logits [B, L, V] fp32; out.routes[j] [B, L, k] int64 for the j-th MoE layer
//
// Padding: `attention_mask` [B, L] (1 = real token) may pad on either side. Rotary positions count the real
// tokens of each sequence (position_ids may also be given), padding keys are never attended, so every real
// token gets the logits of its unpadded sequence.
//
// Attention: when every query sees at most index_topk keys the exact dense causal path runs; otherwise the
// indexer's top-k selects the keys and attention runs over the gathered entries only (memory O(L·k)).
//
// DSA training stages (SPEC §3): return_indexer / return_attention / return_topk give the inputs of the losses in
// dsa/indexer_loss.h; detach_indexer_inputs keeps the indexer's graph apart from the rest of the model.
//
// Decode: with a KvCache, forward() appends the new tokens' MLA latents (c_kv, k_pe) and indexer keys and
// attends over everything cached; prefill followed by one-token steps equals one full forward.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include "dsa/config.h"
#include "dsa/rope.h"
#include "dsa/weights.h"
#include "moe/expert_parallel.h"

namespace dsrl::dsa {

/// Per-layer decode state; tensors are allocated for `capacity` positions.
struct LayerCache {
    at::Tensor c_kv;     ///< [B, capacity, kv_lora] (normalized latent)
    at::Tensor k_pe;     ///< [B, capacity, qk_rope] (rotated)
    at::Tensor index_k;  ///< [B, capacity, index_head_dim] (normalized, rotated)
};

struct KvCache {
    std::vector<LayerCache> layers;
    at::Tensor key_valid;  ///< [B, capacity] bool: real (non-padding) tokens
    at::Tensor next_pos;   ///< [B] int64: rotary position of each sequence's next real token
    int64_t length = 0;    ///< positions filled (including padding slots)
    int64_t capacity = 0;
    int64_t batch() const { return key_valid.defined() ? key_valid.size(0) : 0; }
    /// Keeps only the sequences `rows` (int64 indices, in the given order): finished sequences leave the
    /// decode batch so they stop consuming compute.
    void select_rows(const at::Tensor& rows);
};

/// A paged decode cache (the rollout engine, rollout/engine.h): every layer's cached entries in one pool of
/// fixed-size blocks — c_kv [slots, kv_lora], k_pe [slots, qk_rope], index_k [slots, index_head_dim], slot =
/// block · block_size + offset. Which blocks hold which sequence is the engine's business (its block tables); a
/// forward sees slots only (PagedStep).
struct PagedKvCache {
    std::vector<LayerCache> layers;  ///< tensors [num_blocks · block_size, D]
    int64_t block_size = 0;
    int64_t num_blocks = 0;
    /// Bytes of one block over every layer.
    int64_t block_bytes() const;
    /// Copies slots [from, from + n) to [to, to + n) in every layer (copy on write of a shared block).
    void copy_slots(int64_t from, int64_t to, int64_t n);
};

/// One forward's access to a PagedKvCache. Every new token's entries are written to its slot. Without read slots
/// the keys are the new tokens alone (a prefill, any attention path); with them, query t of row b attends over the
/// row's keys read_slots[b, 0..S) — its sequence's tokens in order, new ones included, so position_ids must be
/// given and a query's key index is its position — through the slot table: the indexer scores the gathered index
/// keys and the sparse attention reads the selected entries straight from the pool (no per-sequence copy of the
/// latents). Dense-regime rows (S <= index_topk) select every visible key, the dense path's set.
struct PagedStep {
    PagedKvCache* cache = nullptr;
    at::Tensor write_slots;  ///< [B, L] int64: each new token's slot (padding tokens: any scratch slot)
    at::Tensor read_slots;   ///< [B, S] int64 (decode), or undefined (prefill)
    at::Tensor key_valid;    ///< [B, S] bool with read_slots: slots that hold the row's keys
    /// Optional [B, L, qk_rope_head_dim / 2] fp32: the rotary factors of position_ids (Model::paged_decode_step
    /// computes them with the slots); undefined: the forward computes them.
    at::Tensor cos, sin;
};

enum class AttentionPath { kAuto, kDense, kSparse };

/// Expert balance of training forwards (SPEC §2.4; the trainer's ExpertBalance fills and drains it): a forward
/// given one adds, per MoE layer, the expert loads of its real tokens to `loads` and, when seq_aux_alpha > 0, the
/// sequence-wise balance loss α · mean over its sequences of Σ_{MoE layers} Σ_e f_e·P_e to `aux_loss` — which the
/// caller adds to its loss before backward (take_aux_loss).
struct MoeBalance {
    double seq_aux_alpha = 0;
    std::vector<at::Tensor> loads;  ///< per MoE layer [E] int64 on the model's device, summed until drained
    at::Tensor aux_loss;            ///< 0-dim fp32, differentiable; undefined while no forward added one
    double aux_loss_sum = 0;        ///< the values taken so far (metrics), until drained
    int64_t aux_loss_count = 0;
    /// `loss` + the balance loss added since the last call (which is then cleared); `loss` itself when none.
    at::Tensor add_aux_loss(const at::Tensor& loss);
};

struct ForwardInput {
    at::Tensor input_ids;       ///< [B, L] int64
    at::Tensor attention_mask;  ///< [B, L] int/bool, 1 = real token; undefined = all real
    at::Tensor position_ids;    ///< [B, L] int64 rotary positions; undefined = count of real tokens
};

struct ForwardOptions {
    bool return_logits = true;    ///< false: only hidden states (e.g. chunked loss computed outside)
    bool return_hidden = false;   ///< the final-normed hidden states [B, L, H]
    bool return_routes = false;   ///< routing record per MoE layer
    bool return_topk = false;     ///< indexer top-k per layer
    bool return_indexer = false;  ///< indexer q/k/w per layer (DSA training stages)
    /// Main-attention inputs per layer in the absorbed MQA form, detached, with the lse of the attention that
    /// ran (targets of the indexer losses and the recall metric, dsa/indexer_loss.h).
    bool return_attention = false;
    /// The indexer's q/k/w are computed from detached h and c_q (SPEC §3 sparse_train): the indexer loss then
    /// reaches only the indexer's weights, and the LM loss never reaches them (selection is gradient-free).
    bool detach_indexer_inputs = false;
    /// kAuto: dense when every query sees <= index_topk keys, else sparse. kDense: dense causal attention
    /// everywhere (indexer warm-up stage). kSparse: indexer top-k selection everywhere (tests, benchmarks).
    AttentionPath path = AttentionPath::kAuto;
    /// Keep-routing replay: expert ids per MoE layer ([B, L, k] integer, e.g. decode_route of a record).
    const std::vector<at::Tensor>* replay_routes = nullptr;
    /// Training forwards: expert loads and the sequence-wise balance loss (MoeBalance); null: not tracked.
    MoeBalance* balance = nullptr;
    /// Keep-indexer replay: the key sets of decoder layer `layer` as [B, L, index_topk] integer key indices (−1 =
    /// none), e.g. decoded from a rollout record; asked once per layer that takes the sparse path. The layer then
    /// attends over these sets and its indexer is not evaluated at all (unless return_indexer or a decode cache
    /// needs it). A key after its query, or outside [0, S), is an error.
    std::function<at::Tensor(int64_t layer)> replay_topk;
    int64_t query_chunk = 256;  ///< queries per attention / indexer chunk (bounds memory)
    /// Paged decode cache (PagedStep; the rollout engine); null: none, or the contiguous KvCache of forward().
    const PagedStep* paged = nullptr;
    /// Checks every input id against the vocabulary on the device (a host sync); the rollout engine checks its ids
    /// on the host and passes false.
    bool check_ids = true;
    /// MoE layers run every expert on every token (moe::routed_experts_dense): no per-expert launches, no host sync.
    /// The rollout engine's decode steps on CUDA; ignored under expert parallelism.
    bool moe_dense = false;
    /// When defined (fp32, contiguous, B·L·V elements on the model's device), the logits are written into it and
    /// ForwardOutput::logits is a view of it: the rollout engine's graphed step leaves the next step's logits where its
    /// sampling reads them.
    at::Tensor logits_out;
};

/// Indexer inputs of one layer (for the DSA losses): q [B, L, H_I, D_I], k [B, S, D_I] over all keys,
/// w [B, L, H_I] fp32 (already × H_I^-1/2), and the key visibility used for the queries.
struct IndexerOutput {
    at::Tensor q, k, w;
};

/// Main-attention inputs of one layer in the absorbed MQA form (SPEC §2.1), all detached:
///   score(t, h, s) = (q_lat[t, h] · c_kv[s] + q_pe[t, h] · k_pe[s]) · scale
/// and the per-head log-sum-exp of the attention that actually ran: over every visible key on the dense path
/// (`dense` true), over the selected top-k set on the sparse path.
struct AttentionInputs {
    at::Tensor q_lat;    ///< [B, L, H, C] q̃ = q_nope · W_UK (kv_lora space), model dtype
    at::Tensor q_pe;     ///< [B, L, H, R] rotated
    at::Tensor c_kv;     ///< [B, S, C] normalized latent of every key (cache included)
    at::Tensor k_pe;     ///< [B, S, R] rotated
    at::Tensor lse;      ///< [B, L, H] fp32 log-sum-exp of the scaled scores (−inf: no key)
    double scale = 0;    ///< softmax scale
    bool dense = false;  ///< lse is over all visible keys (dense path); false: over the selected set
};

struct ForwardOutput {
    at::Tensor logits;                       ///< [B, L, V] fp32
    at::Tensor hidden;                       ///< [B, L, H] when return_hidden
    std::vector<at::Tensor> routes;          ///< per MoE layer [B, L, k] int64
    std::vector<at::Tensor> topk;            ///< per layer [B, L, index_topk] int32 (−1 invalid); key index space
    std::vector<IndexerOutput> indexer;      ///< per layer when return_indexer
    std::vector<AttentionInputs> attention;  ///< per layer when return_attention
    at::Tensor query_pos;                    ///< [B, L] int64 key index of each query (cache offset included)
    at::Tensor key_valid;                    ///< [B, S] bool visibility of every key
};

/// Bytes one cached token takes over every layer (c_kv + k_pe + index_k in the model's dtype): a paged cache's
/// size before any model is built.
int64_t cache_bytes_per_token(const ModelConfig& cfg);

class Model {
public:
    Model(ModelConfig cfg, ModelWeights weights);
    /// Random HF-like init (deterministic in seed).
    static Model random(const ModelConfig& cfg, uint64_t seed, c10::Device device);
    /// Loads an HF checkpoint directory: the architecture from its config.json, dtype and impl from `run`
    /// (a job's ModelConfig passes as its runtime part; its architecture fields are not used). Tensors the model
    /// does not use — the multi-token-prediction layer — are kept as stored and written back by every save.
    static Model load(const std::string& dir, const ModelRuntime& run, c10::Device device);
    /// Writes config.json + safetensors in the HF layout (atomically), with the tokenizer files of the checkpoint
    /// it was loaded from (SaveOptions::companion_dir). Under expert parallelism a rank holds only its experts:
    /// use save_distributed.
    void save(const std::string& dir, const SaveOptions& opt = {}) const;
    /// save() whatever the layout, one checkpoint in the HF layout. Without expert parallelism the ranks passing
    /// `write` save. Under expert parallelism it is a collective over the expert-parallel group: a group with a
    /// rank passing `write` writes `dir` with every rank writing its own experts to its own shard files and the
    /// group's rank 0 the rest and the index (SaveOptions::writers; nothing is gathered, so no rank ever holds the
    /// whole model); `dir` must be on a file system the group shares.
    void save_distributed(const std::string& dir, const SaveOptions& opt, bool write) const;
    /// The weights in the HF layout with every routed expert (hf_named_tensors); under expert parallelism the
    /// experts are all-gathered over the group (collective: every rank of the group calls it).
    std::vector<std::pair<std::string, at::Tensor>> gather_hf_tensors() const;

    /// Expert parallelism (moe/expert_parallel.h): keeps only this rank's routed experts [E/P, ...] of every MoE
    /// layer (the rest is freed) and runs the MoE layers across `ep.group` from now on — a collective: every rank of
    /// the group runs the same forwards (and backwards). `ep.group` must outlive the model. Call it before taking
    /// the parameters for an optimizer. ConfigError when the group size does not divide n_routed_experts.
    void set_expert_parallel(const moe::ExpertParallel& ep);
    /// The checkpoint tensors kept unchanged for saving (see load()).
    const std::vector<std::pair<std::string, at::Tensor>>& passthrough() const { return passthrough_; }
    /// The expert-parallel group, or null (every expert local).
    const moe::ExpertParallel* expert_parallel() const { return ep_.group != nullptr ? &ep_ : nullptr; }
    /// A copy of this model with its own tensors (detached, on `device`), under the same expert parallelism.
    Model clone(c10::Device device) const;
    /// For forwards without gradients under autocast to `dtype` (a rollout's prefill and decode steps): this model
    /// with the tensors only matmuls read — the attention and indexer projections, the dense MLPs, the shared and
    /// routed experts, lm_head — as `dtype` copies made once, so a forward reads them as they are instead of casting
    /// every fp32 weight on every call (on CUDA a cast kernel per weight per decode step, and the fp32 bytes read).
    /// Bit for bit the autocast forward's results: autocast casts these matmul inputs to `dtype` anyway. The norms,
    /// the embeddings, the router's gate and bias and the indexer's head weights stay as they are (read elementwise
    /// or in fp32 regions). A snapshot: weight updates after it do not reach the copies; tensors already in `dtype`
    /// are shared, not copied.
    Model autocast_weights(at::ScalarType dtype) const;
    /// A copy (sharing every tensor) whose layers also hold their projections that read one input stacked
    /// (LayerWeights::fused_a / fused_b, and a dense layer's fused_gate_up): forwards without autograd then run one
    /// GEMM for q_a, kv_a and the indexer's wk, one for q_b and the indexer's wq_b, one for a dense MLP's gate and up
    /// — three kernels fewer per layer (four in a dense one), the same products of the same weights.
    /// A snapshot like autocast_weights (the rollout engine's, for one generate() call); layers whose projections
    /// differ in dtype or device stay unfused. The extra memory is a copy of those projections (bounded below).
    /// With `absorb`, a layer whose absorbed query rows (LayerWeights::absorbed) are at most kAbsorbMaxExtraBytes
    /// larger than the factors they replace also gets them: one per-head batched matmul fewer per layer and step, the
    /// same product associated the other way (the weights' product rounded once to their dtype). Small models only: at
    /// DeepSeek-V3.2's shapes the absorbed rows are several times the bytes of the factors, and a decode step is bound
    /// by those bytes.
    /// A stack is made only where its projections are at most `max_stack_bytes` together (the attention's two: both
    /// or neither): one launch fewer pays at small models' shapes, while at DeepSeek-V3.2's the stacks would copy
    /// several GiB (a dense MLP's alone half a GiB a layer) for a step bound by the same bytes either way.
    Model fuse_projections(bool absorb = false, int64_t max_stack_bytes = kMaxStackBytes) const;
    static constexpr int64_t kAbsorbMaxExtraBytes = int64_t{8} << 20;
    static constexpr int64_t kMaxStackBytes = int64_t{64} << 20;
    /// Expert parallelism: the exchanges of one forward with no tokens — what a rank with nothing to compute runs
    /// while the other ranks of its group run a forward (ForwardLockstep). No-op without expert parallelism.
    void idle_forward() const;

    const ModelConfig& config() const { return cfg_; }
    ModelWeights& weights() { return w_; }
    const ModelWeights& weights() const { return w_; }
    std::vector<NamedTensor> named_tensors() { return dsa::named_tensors(w_, cfg_); }
    c10::Device device() const { return w_.embed_tokens.device(); }

    ForwardOutput forward(const ForwardInput& in, const ForwardOptions& opt = {}, KvCache* cache = nullptr) const;

    /// An empty decode cache for `batch` sequences of up to `capacity` positions.
    KvCache new_cache(int64_t batch, int64_t capacity) const;
    /// An empty paged cache of `num_blocks` blocks of `block_size` slots each (zeros, the model's dtype).
    PagedKvCache new_paged_cache(int64_t num_blocks, int64_t block_size) const;
    /// A paged decode step of one new token a row (rows [R]): the write and read slots and the key mask through the
    /// rows' block tables (table [R, NB] int64 block ids of `cache`, pos [R] int64 the new token's position, keys
    /// 0 .. keys read: keys <= NB · block_size) and the positions' rotary factors. One kernel where it fits (CUDA,
    /// impl not reference), else the ATen formulas — its oracle.
    PagedStep paged_decode_step(PagedKvCache& cache,
                                const at::Tensor& table,
                                const at::Tensor& pos,
                                int64_t keys) const;
    /// Bytes one cached token takes over every layer (c_kv + k_pe + index_k in the model's dtype).
    int64_t cache_bytes_per_token() const;

    /// lm_head over hidden states [.., H] -> fp32 logits, into `out` when defined (ForwardOptions::logits_out).
    at::Tensor logits(const at::Tensor& hidden, const at::Tensor& out = {}) const;

private:
    ModelConfig cfg_;
    ModelWeights w_;
    // The checkpoint's tensors the model does not use (its multi-token-prediction layer) as stored — views of the
    // mapped files — written back unchanged by every save, with num_nextn_predict_layers.
    std::vector<std::pair<std::string, at::Tensor>> passthrough_;
    int64_t nextn_layers_ = 0;
    RopeTable rope_;
    moe::ExpertParallel ep_;  // group null: every expert local
};

/// Lock-step forwards under expert parallelism (every rank of a group must run the same forwards): a loop whose
/// number of forwards differs per rank (decoding until its own sequences end) calls step() before each forward
/// and finish() when it has none left; finish() joins the others' forwards with idle ones until every rank of
/// the group has finished. One all-reduce of a flag per forward; no-ops without expert parallelism.
///
///   ForwardLockstep lock(model);
///   while (work) { lock.step(); model.forward(...); }
///   lock.finish();
class ForwardLockstep {
public:
    explicit ForwardLockstep(const Model& model) : model_(model) {}
    void step() const;
    void finish() const;
    /// Whether any rank of the group has `mine` true (one all-reduce); `mine` itself without expert parallelism. For
    /// loops of several forward loops (a multi-turn rollout's turns): every rank runs one more round while any has
    /// work. Call it between rounds, never between a step() and its forward.
    bool any(bool mine) const;

private:
    bool any_busy(bool mine) const;
    const Model& model_;
};

/// RMSNorm as in transformers: weight · (x / sqrt(mean(x²) + eps)) computed in fp32, cast back first.
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);

}  // namespace dsrl::dsa
