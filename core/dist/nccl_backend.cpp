// NCCL backend of the Communicator: CUDA tensors, enqueued on the current CUDA stream of the tensor's
// device. Compiled only when CUDA is enabled (CUDA_SRCS). The unique id travels over the group's MPI
// communicator. Every op records an event and registers it with the watchdog (core/dist/watchdog.h); a
// health check polls ncclCommGetAsyncError. On a timeout or an async error the watchdog calls
// ncclCommAbort, prints the op and group, and aborts the job (Note [Dist watchdog] in docs/distributed.md).
#include <cuda_runtime.h>
#include <mpi.h>
#include <nccl.h>

#include <atomic>

#include <absl/strings/str_cat.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/dist/backend.h"
#include "core/dist/watchdog.h"
#include "core/error.h"

namespace dsrl::dist::detail {

int cuda_device_count() { return static_cast<int>(c10::cuda::device_count()); }

void set_cuda_device(int device) { c10::cuda::set_device(static_cast<c10::DeviceIndex>(device)); }

namespace {

void check_nccl(ncclResult_t rc, const char* what, const std::string& group) {
    if (rc == ncclSuccess || rc == ncclInProgress) return;
    throw DistError(absl::StrCat("dist ", what, " on group '", group, "' failed in NCCL: ", ncclGetErrorString(rc),
                                 " (", static_cast<int>(rc), ")", " — set NCCL_DEBUG=WARN for details"));
}

ncclDataType_t nccl_type(c10::ScalarType dtype) {
    switch (dtype) {
        case at::kFloat:
            return ncclFloat32;
        case at::kDouble:
            return ncclFloat64;
        case at::kBFloat16:
            return ncclBfloat16;
        case at::kHalf:
            return ncclFloat16;
        case at::kLong:
            return ncclInt64;
        case at::kInt:
            return ncclInt32;
        case at::kByte:
            return ncclUint8;
        default:
            break;
    }
    DSRL_INTERNAL_ASSERT(false, "nccl_type: dtype ", std::string(c10::toString(dtype)), " passed the front-half check");
    __builtin_unreachable();
}

ncclRedOp_t nccl_op(ReduceOp op) {
    switch (op) {
        case ReduceOp::kSum:
            return ncclSum;
        case ReduceOp::kAvg:
            return ncclAvg;
        case ReduceOp::kMax:
            return ncclMax;
        case ReduceOp::kMin:
            return ncclMin;
    }
    return ncclSum;
}

void* at_elem(const at::Tensor& t, int64_t offset) {
    return static_cast<char*>(t.data_ptr()) + offset * static_cast<int64_t>(t.element_size());
}

class NcclBackend final : public Backend {
public:
    explicit NcclBackend(const GroupInfo& g) : g_(g) {
        device_ = static_cast<int>(c10::cuda::current_device());
        ncclUniqueId id;
        if (g_.rank == 0) check_nccl(ncclGetUniqueId(&id), "nccl_init (ncclGetUniqueId)", g_.name);
        check_mpi(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, g_.comm), "nccl_init (unique id broadcast)", g_.name);
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
        check_nccl(ncclCommInitRank(&comm_, g_.size, id, g_.rank), "nccl_init (ncclCommInitRank)", g_.name);
        Watchdog& w = Watchdog::instance();
        owner_ = w.new_owner();
        if (g_.timeout_s > 0) {
            w.add_health_check(
                owner_,
                [this]() -> std::string {
                    if (aborted_.load()) return "";
                    ncclResult_t async = ncclSuccess;
                    if (ncclCommGetAsyncError(comm_, &async) != ncclSuccess) return "";
                    if (async == ncclSuccess || async == ncclInProgress) return "";
                    return absl::StrCat("NCCL asynchronous error on group '", g_.name, "': ", ncclGetErrorString(async),
                                        " (communicator aborted)");
                },
                [this] { abort_comm(); });
        }
    }

    ~NcclBackend() override {
        Watchdog::instance().forget(owner_);
        if (!aborted_.load()) ncclCommDestroy(comm_);
    }

    const char* name() const override { return "NCCL"; }

    void all_reduce(at::Tensor& t, ReduceOp op) override {
        run("all_reduce", t, [&](cudaStream_t s) {
            return ncclAllReduce(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), nccl_op(op), comm_,
                                 s);
        });
    }

    void broadcast(at::Tensor& t, int root) override {
        run("broadcast", t, [&](cudaStream_t s) {
            return ncclBroadcast(t.data_ptr(), t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), root, comm_, s);
        });
    }

    void all_gather(const at::Tensor& in, at::Tensor& out) override {
        run("all_gather", in, [&](cudaStream_t s) {
            return ncclAllGather(in.data_ptr(), out.data_ptr(), in.numel(), nccl_type(in.scalar_type()), comm_, s);
        });
    }

    void all_gather_v(const at::Tensor& in, at::Tensor& out, const std::vector<int64_t>& counts) override {
        run("all_gather_v", in, [&](cudaStream_t s) {
            // One broadcast per root, fused into one group: NCCL has no native all_gather_v.
            ncclResult_t rc = ncclGroupStart();
            if (rc != ncclSuccess) return rc;
            int64_t off = 0;
            for (int r = 0; r < g_.size; ++r) {
                rc = ncclBroadcast(in.data_ptr(), at_elem(out, off), counts[r], nccl_type(in.scalar_type()), r, comm_,
                                   s);
                if (rc != ncclSuccess) break;
                off += counts[r];
            }
            const ncclResult_t end = ncclGroupEnd();
            return rc != ncclSuccess ? rc : end;
        });
    }

    void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) override {
        run("reduce_scatter", in, [&](cudaStream_t s) {
            return ncclReduceScatter(in.data_ptr(), out.data_ptr(), out.numel(), nccl_type(in.scalar_type()),
                                     nccl_op(op), comm_, s);
        });
    }

    void all_to_all_v(const at::Tensor& in,
                      at::Tensor& out,
                      const std::vector<int64_t>& send_counts,
                      const std::vector<int64_t>& recv_counts) override {
        run("all_to_all", in, [&](cudaStream_t s) {
            ncclResult_t rc = ncclGroupStart();
            if (rc != ncclSuccess) return rc;
            int64_t soff = 0;
            int64_t roff = 0;
            const ncclDataType_t type = nccl_type(in.scalar_type());
            for (int r = 0; r < g_.size && rc == ncclSuccess; ++r) {
                if (send_counts[r] > 0) rc = ncclSend(at_elem(in, soff), send_counts[r], type, r, comm_, s);
                if (rc == ncclSuccess && recv_counts[r] > 0) {
                    rc = ncclRecv(at_elem(out, roff), recv_counts[r], type, r, comm_, s);
                }
                soff += send_counts[r];
                roff += recv_counts[r];
            }
            const ncclResult_t end = ncclGroupEnd();
            return rc != ncclSuccess ? rc : end;
        });
    }

    void send(const at::Tensor& t, int dst, int tag) override {
        run("send", t, [&](cudaStream_t s) {
            return ncclSend(t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), dst, comm_, s);
        });
    }

    void recv(at::Tensor& t, int src, int tag) override {
        run("recv", t, [&](cudaStream_t s) {
            return ncclRecv(t.data_ptr(), t.numel(), nccl_type(t.scalar_type()), src, comm_, s);
        });
    }

private:
    template <class F>
    void run(const char* op, const at::Tensor& t, F&& enqueue) {
        TORCH_CHECK(t.device().index() == device_, "dist ", op, " on group '", g_.name,
                    "': the group's NCCL communicator lives on cuda:", device_, " but the tensor is on ", t.device(),
                    " (use one device per process; see dist::Bootstrap)");
        if (aborted_.load()) {
            throw DistError(absl::StrCat("dist ", op, " on group '", g_.name, "': the NCCL communicator was aborted"));
        }
        c10::cuda::CUDAGuard guard(static_cast<c10::DeviceIndex>(device_));
        const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device_)).stream();
        check_nccl(enqueue(stream), op, g_.name);
        track(op, stream);
    }

    // Registers the op with the watchdog until an event recorded after it completes.
    void track(const char* op, cudaStream_t stream) {
        if (g_.timeout_s <= 0) return;
        cudaEvent_t raw = nullptr;
        cudaError_t err = cudaEventCreateWithFlags(&raw, cudaEventDisableTiming);
        if (err == cudaSuccess) err = cudaEventRecord(raw, stream);
        if (err != cudaSuccess) {
            if (raw != nullptr) cudaEventDestroy(raw);
            throw DistError(absl::StrCat("dist ", op, " on group '", g_.name,
                                         "': could not record a CUDA event: ", cudaGetErrorString(err)));
        }
        std::shared_ptr<CUevent_st> event(raw, [](cudaEvent_t e) { cudaEventDestroy(e); });
        Watchdog::Entry e;
        e.op = op;
        e.group = g_.name;
        e.backend = "NCCL";
        e.start = Watchdog::Clock::now();
        e.timeout_s = static_cast<double>(g_.timeout_s);
        e.done = [event] { return cudaEventQuery(event.get()) != cudaErrorNotReady; };
        e.abort = [this] { abort_comm(); };
        e.owner = owner_;
        Watchdog::instance().add(std::move(e));
    }

    void abort_comm() {
        if (!aborted_.exchange(true)) ncclCommAbort(comm_);
    }

    GroupInfo g_;
    int device_ = 0;
    ncclComm_t comm_ = nullptr;
    uint64_t owner_ = 0;
    std::atomic<bool> aborted_{false};
};

}  // namespace

std::unique_ptr<Backend> make_nccl_backend(const GroupInfo& group) { return std::make_unique<NcclBackend>(group); }

}  // namespace dsrl::dist::detail
