// dsrl_dist_fail_probe: a tiny job used by fail_probe_test.sh to check the failure modes of SPEC §8.
//   throw    rank 1 throws a DistError while rank 0 waits in an all_reduce: main_guard prints
//            "[rank 1] error: ..." and MPI_Abort ends the job.
//   timeout  rank 1 never enters an all_reduce on group 'dp' (it sleeps); rank 0's watchdog prints
//            "[rank 0] dist timeout: all_reduce on group 'dp' did not complete within 2 s" and aborts.
#include <chrono>
#include <cstring>
#include <thread>

#include <ATen/ops/ones.h>

#include "core/dist/bootstrap.h"
#include "core/dist/communicator.h"
#include "core/dist/config.h"
#include "core/dist/groups.h"
#include "core/error.h"
#include "core/main_guard.h"

namespace {

int run(int argc, char** argv) {
    dsrl::dist::Bootstrap boot(&argc, &argv);
    if (argc != 2 || (std::strcmp(argv[1], "throw") != 0 && std::strcmp(argv[1], "timeout") != 0)) {
        throw dsrl::ConfigError("usage: dsrl_dist_fail_probe throw|timeout");
    }
    dsrl::DistConfig cfg;  // timeout from DSRL_DIST_TIMEOUT_S when set
    auto world = dsrl::dist::Communicator::world(dsrl::dist::effective_timeout_s(cfg));
    const auto groups = dsrl::dist::make_standard_groups(world, cfg);
    world.barrier();
    at::Tensor t = at::ones({16});
    if (std::strcmp(argv[1], "throw") == 0) {
        if (boot.world_rank() == 1) throw dsrl::DistError("probe failure on rank 1");
        groups.dp.all_reduce(t);  // never completes: rank 1 is gone
    } else {
        if (boot.world_rank() == 1) {
            std::this_thread::sleep_for(std::chrono::seconds(60));  // a stuck rank
        } else {
            groups.dp.all_reduce(t);
        }
    }
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    return dsrl::guarded_main([&] { return run(argc, argv); });
}
