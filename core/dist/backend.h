// Internal: the interface behind Communicator (core/dist/communicator.h). The front half has checked every
// argument and peer agreement; backends only move bytes. Counts and offsets are in elements.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "core/dist/communicator.h"

namespace dsrl::dist::detail {

class Backend {
public:
    virtual ~Backend() = default;
    virtual const char* name() const = 0;
    virtual void all_reduce(at::Tensor& t, ReduceOp op) = 0;
    virtual void broadcast(at::Tensor& t, int root) = 0;
    /// `out` holds size * in.numel() elements.
    virtual void all_gather(const at::Tensor& in, at::Tensor& out) = 0;
    /// counts[r]: elements from rank r; `out` holds their sum.
    virtual void all_gather_v(const at::Tensor& in, at::Tensor& out, const std::vector<int64_t>& counts) = 0;
    /// `in` holds size * out.numel() elements.
    virtual void reduce_scatter(const at::Tensor& in, at::Tensor& out, ReduceOp op) = 0;
    virtual void all_to_all_v(const at::Tensor& in,
                              at::Tensor& out,
                              const std::vector<int64_t>& send_counts,
                              const std::vector<int64_t>& recv_counts) = 0;
    virtual void send(const at::Tensor& t, int dst, int tag) = 0;
    virtual void recv(at::Tensor& t, int src, int tag) = 0;
};

/// What a backend knows about its group.
struct GroupInfo {
    MPI_Comm comm = MPI_COMM_NULL;
    std::string name;
    int rank = 0;
    int size = 0;
    std::vector<int> world_ranks;
    int64_t timeout_s = 0;
};

std::unique_ptr<Backend> make_mpi_backend(const GroupInfo& group);
#ifdef DSRL_WITH_CUDA
/// Creates the group's NCCL communicator on the current CUDA device (collective over group.comm: the
/// unique id travels over MPI). Defined in nccl_backend.cpp.
std::unique_ptr<Backend> make_nccl_backend(const GroupInfo& group);
/// Visible CUDA devices (0 when the driver finds none) and device selection, for Bootstrap.
int cuda_device_count();
void set_cuda_device(int device);
#endif

/// The element type used to move `dtype` over MPI (bf16/fp16 move as MPI_UINT16_T).
MPI_Datatype mpi_move_type(c10::ScalarType dtype);
/// Throws DistError when `count` does not fit MPI's int count.
int mpi_count(int64_t count, const char* op, const std::string& group);
/// Turns an MPI error code into a DistError naming the op and group.
void check_mpi(int rc, const char* what, const std::string& group);

}  // namespace dsrl::dist::detail
