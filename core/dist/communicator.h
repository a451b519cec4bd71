// Communicator: collectives over one group of ranks (SPEC §8). One front half checks arguments (contiguity,
// dtype, shapes) and, cheaply, that every rank of the group called the same operation with matching
// tensors; then it dispatches by tensor device to one of two backends: MPI for CPU tensors, NCCL for CUDA
// tensors (on the current CUDA stream; the NCCL communicator of a group is created on its first CUDA op).
// Byte-buffer variants (serialized records) always travel over MPI.
//
// Ranks passed to and returned by a Communicator are ranks within its group. Dtypes: fp32, fp64, bf16,
// fp16, int64, int32, uint8. bf16/fp16 reductions over MPI accumulate in fp32.
//
//   auto world = Communicator::world(/*timeout_s=*/600);
//   at::Tensor g = ...;                   // same shape on every rank
//   world.all_reduce(g, ReduceOp::kAvg);  // in place
//   auto dp = world.split("dp", /*color=*/rank % 2, /*key=*/rank);
//
// Failures: a bad argument is a c10::Error (TORCH_CHECK) naming the op and the actual value; ranks that
// disagree on an op are a dsrl::DistError naming the op, the group and both ranks; an op that does not
// complete within the timeout ends the job through the watchdog (core/dist/watchdog.h).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

namespace dsrl::dist {

enum class ReduceOp { kSum, kAvg, kMax, kMin };
const char* reduce_op_name(ReduceOp op);

namespace detail {
struct GroupState;
}

class Communicator {
public:
    /// An invalid handle (is_member() false); every op throws.
    Communicator() = default;

    /// The world group (an MPI_Comm_dup of MPI_COMM_WORLD) named "world". MPI must be initialized (see
    /// Bootstrap); throws dsrl::DistError otherwise. `timeout_s` <= 0 disables the watchdog for its ops.
    static Communicator world(int64_t timeout_s);

    /// Collective over this group: ranks passing the same `color` (>= 0) form a new group named `name`,
    /// ordered by `key` (ties by current rank). A negative color leaves this rank out; it gets a handle
    /// whose is_member() is false. The child inherits the timeout.
    Communicator split(const std::string& name, int color, int key) const;

    bool is_member() const;
    const std::string& name() const;
    int rank() const;
    int size() const;
    /// World rank of every member, indexed by group rank.
    const std::vector<int>& world_ranks() const;
    int64_t timeout_s() const;

    // --- tensors (every rank of the group calls the same op in the same order) -----------------------------
    /// In place; `t` contiguous, same numel/dtype on every rank. kAvg needs a floating dtype.
    void all_reduce(at::Tensor& t, ReduceOp op = ReduceOp::kSum) const;
    /// In place from group rank `root`; same numel/dtype on every rank.
    void broadcast(at::Tensor& t, int root) const;
    /// [*shape] on every rank -> [size, *shape], entry r from group rank r.
    at::Tensor all_gather(const at::Tensor& t) const;
    /// [n_r, *rest] (n_r may differ per rank, rest must agree) -> [sum n_r, *rest] in rank order. When
    /// `counts` is given it receives n_r for every rank.
    at::Tensor all_gather_v(const at::Tensor& t, std::vector<int64_t>* counts = nullptr) const;
    /// [size * n, *rest] -> [n, *rest]: rank r gets rows [r*n, (r+1)*n) reduced over ranks.
    at::Tensor reduce_scatter(const at::Tensor& t, ReduceOp op = ReduceOp::kSum) const;
    /// [size * n, *rest] -> [size * n, *rest]: rows [j*n, (j+1)*n) go to rank j; output block i came from i.
    at::Tensor all_to_all(const at::Tensor& t) const;
    /// [sum send_counts, *rest] -> [sum recv_counts, *rest]: the next send_counts[j] rows go to rank j; the
    /// output holds the rows received from rank 0, 1, ... in order. Receive counts are exchanged here; when
    /// `recv_counts` is given it receives them.
    at::Tensor all_to_all_v(const at::Tensor& t,
                            const std::vector<int64_t>& send_counts,
                            std::vector<int64_t>* recv_counts = nullptr) const;
    /// Point to point. MPI: `tag` in [0, 32767] matches sends and receives; a size or dtype mismatch is
    /// detected by recv (DistError). NCCL: ordered per peer, `tag` ignored, sizes must agree.
    void send(const at::Tensor& t, int dst, int tag = 0) const;
    /// Receives into `t` (contiguous, pre-allocated with the sender's numel and dtype).
    void recv(at::Tensor& t, int src, int tag = 0) const;
    /// Blocks until every rank of the group reached it (MPI).
    void barrier() const;

    // --- byte buffers (serialized records; always MPI, host memory) ----------------------------------------
    void broadcast_bytes(std::string& buf, int root) const;
    void broadcast_bytes(std::vector<uint8_t>& buf, int root) const;
    void send_bytes(const std::string& buf, int dst, int tag = 0) const;
    void send_bytes(const std::vector<uint8_t>& buf, int dst, int tag = 0) const;
    /// Receives a message of any size from `src` with `tag`.
    std::string recv_bytes(int src, int tag = 0) const;
    std::vector<uint8_t> recv_bytes_vec(int src, int tag = 0) const;
    /// Buffers of any size per rank -> every rank's buffer, indexed by group rank.
    std::vector<std::string> all_gather_bytes(const std::string& buf) const;
    std::vector<std::vector<uint8_t>> all_gather_bytes(const std::vector<uint8_t>& buf) const;

private:
    explicit Communicator(std::shared_ptr<detail::GroupState> state) : state_(std::move(state)) {}
    detail::GroupState& checked_state(const char* op) const;
    std::shared_ptr<detail::GroupState> state_;
};

}  // namespace dsrl::dist
