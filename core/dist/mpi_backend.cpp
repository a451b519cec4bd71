// MPI backend of the Communicator: CPU tensors. bf16/fp16 reductions upcast to fp32 (MPI has no 16-bit
// float types), reduce, then round back once; data movement ships them as 16-bit words.
#include <mpi.h>

#include <ATen/ops/empty.h>
#include <absl/strings/str_cat.h>

#include "core/dist/backend.h"
#include "core/error.h"

namespace dsrl::dist::detail {

MPI_Datatype mpi_move_type(c10::ScalarType dtype) {
    switch (dtype) {
        case at::kFloat:
            return MPI_FLOAT;
        case at::kDouble:
            return MPI_DOUBLE;
        case at::kBFloat16:
        case at::kHalf:
            return MPI_UINT16_T;
        case at::kLong:
            return MPI_INT64_T;
        case at::kInt:
            return MPI_INT32_T;
        case at::kByte:
            return MPI_UINT8_T;
        default:
            break;
    }
    DSRL_INTERNAL_ASSERT(false, "mpi_move_type: dtype ", std::string(c10::toString(dtype)),
                         " passed the front-half check");
    __builtin_unreachable();
}

namespace {

MPI_Op mpi_op(ReduceOp op) {
    switch (op) {
        case ReduceOp::kSum:
        case ReduceOp::kAvg:
            return MPI_SUM;
        case ReduceOp::kMax:
            return MPI_MAX;
        case ReduceOp::kMin:
            return MPI_MIN;
    }
    return MPI_SUM;
}

bool is_half(const at::Tensor& t) { return t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kHalf; }

std::vector<int> to_int(const std::vector<int64_t>& v, const char* op, const std::string& group) {
    std::vector<int> out(v.size());
    for (size_t i = 0; i < v.size(); ++i) out[i] = mpi_count(v[i], op, group);
    return out;
}

std::vector<int> displacements(const std::vector<int64_t>& counts, const char* op, const std::string& group) {
    std::vector<int> out(counts.size());
    int64_t off = 0;
    for (size_t i = 0; i < counts.size(); ++i) {
        out[i] = mpi_count(off, op, group);
        off += counts[i];
    }
    mpi_count(off, op, group);
    return out;
}

class MpiBackend final : public Backend {
public:
    explicit MpiBackend(const GroupInfo& g) : g_(g) {}
    const char* name() const override { return "MPI"; }

    void all_reduce(at::Tensor& t, ReduceOp op) override {
        at::Tensor work = is_half(t) ? t.to(at::kFloat) : t;
        const int n = mpi_count(work.numel(), "all_reduce", g_.name);
        check_mpi(
            MPI_Allreduce(MPI_IN_PLACE, work.data_ptr(), n, mpi_move_type(work.scalar_type()), mpi_op(op), g_.comm),
            "all_reduce", g_.name);
        if (op == ReduceOp::kAvg) work.div_(g_.size);
        if (!work.is_same(t)) t.copy_(work);
    }

    void broadcast(at::Tensor& t, int root) override {
        const int n = mpi_count(t.numel(), "broadcast", g_.name);
        check_mpi(MPI_Bcast(t.data_ptr(), n, mpi_move_type(t.scalar_type()), root, g_.comm), "broadcast", g_.name);
    }

    void all_gather(const at::Tensor& in, at::Tensor& out) override {
        const int n = mpi_count(in.numel(), "all_gather", g_.name);
        mpi_count(out.numel(), "all_gather", g_.name);
        const MPI_Datatype type = mpi_move_type(in.scalar_type());
        check_mpi(MPI_Allgather(in.data_ptr(), n, type, out.data_ptr(), n, type, g_.comm), "all_gather", g_.name);
    }

    void all_gather_v(const at::Tensor& in, at::Tensor& out, const std::vector<int64_t>& counts) override {
        const std::vector<int> c = to_int(counts, "all_gather_v", g_.name);
        const std::vector<int> d = displacements(counts, "all_gather_v", g_.name);
        const MPI_Datatype type = mpi_move_type(in.scalar_type());
        check_mpi(MPI_Allgatherv(in.data_ptr(), mpi_count(in.numel(), "all_gather_v", g_.name), type, out.data_ptr(),
                                 c.data(), d.data(), type, g_.comm),
                  "all_gather_v", g_.name);
    }

    void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) override {
        const at::Tensor src = is_half(in) ? in.to(at::kFloat) : in;
        at::Tensor dst = is_half(out) ? at::empty(out.sizes(), out.options().dtype(at::kFloat)) : out;
        mpi_count(src.numel(), "reduce_scatter", g_.name);
        const int n = mpi_count(dst.numel(), "reduce_scatter", g_.name);
        check_mpi(MPI_Reduce_scatter_block(src.data_ptr(), dst.data_ptr(), n, mpi_move_type(src.scalar_type()),
                                           mpi_op(op), g_.comm),
                  "reduce_scatter", g_.name);
        if (op == ReduceOp::kAvg) dst.div_(g_.size);
        if (!dst.is_same(out)) out.copy_(dst);
    }

    void all_to_all_v(const at::Tensor& in,
                      at::Tensor& out,
                      const std::vector<int64_t>& send_counts,
                      const std::vector<int64_t>& recv_counts) override {
        const std::vector<int> sc = to_int(send_counts, "all_to_all_v", g_.name);
        const std::vector<int> sd = displacements(send_counts, "all_to_all_v", g_.name);
        const std::vector<int> rc = to_int(recv_counts, "all_to_all_v", g_.name);
        const std::vector<int> rd = displacements(recv_counts, "all_to_all_v", g_.name);
        const MPI_Datatype type = mpi_move_type(in.scalar_type());
        check_mpi(MPI_Alltoallv(in.data_ptr(), sc.data(), sd.data(), type, out.data_ptr(), rc.data(), rd.data(), type,
                                g_.comm),
                  "all_to_all_v", g_.name);
    }

    void send(const at::Tensor& t, int dst, int tag) override {
        const int n = mpi_count(t.numel(), "send", g_.name);
        check_mpi(MPI_Send(t.data_ptr(), n, mpi_move_type(t.scalar_type()), dst, tag, g_.comm), "send", g_.name);
    }

    void recv(at::Tensor& t, int src, int tag) override {
        const int n = mpi_count(t.numel(), "recv", g_.name);
        const MPI_Datatype type = mpi_move_type(t.scalar_type());
        // Probe first so that a size mismatch is a clear DistError rather than MPI_ERR_TRUNCATE.
        MPI_Status status;
        check_mpi(MPI_Probe(src, tag, g_.comm, &status), "recv", g_.name);
        int bytes = 0;
        MPI_Get_count(&status, MPI_BYTE, &bytes);
        const int64_t expected = t.numel() * static_cast<int64_t>(t.element_size());
        if (bytes != expected) {
            throw DistError(absl::StrCat(
                "dist recv on group '", g_.name, "': rank ", g_.rank, " (world rank ", g_.world_ranks[g_.rank],
                ") expected ", expected, " bytes (", t.numel(), " x ", std::string(c10::toString(t.scalar_type())),
                ") from rank ", src, " (world rank ", g_.world_ranks[src], ") with tag ", tag, " but the message has ",
                bytes, " bytes; send and recv must agree on numel and dtype"));
        }
        check_mpi(MPI_Recv(t.data_ptr(), n, type, src, tag, g_.comm, MPI_STATUS_IGNORE), "recv", g_.name);
    }

private:
    GroupInfo g_;
};

}  // namespace

std::unique_ptr<Backend> make_mpi_backend(const GroupInfo& group) { return std::make_unique<MpiBackend>(group); }

}  // namespace dsrl::dist::detail
