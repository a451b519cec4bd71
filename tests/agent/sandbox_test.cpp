// The code sandbox (issue 20 item 5a, agent/sandbox.h): the program runs with no network (a connection to a port
// this test listens on fails inside, though it works outside), within CPU, memory and wall-clock limits, in a private
// temporary directory (removed afterwards) with an empty environment; a missing program is an error. Skipped, saying
// why, where no network namespace can be made (not root, no user namespaces) — the sandbox then refuses to run.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "agent/sandbox.h"
#include "core/fs.h"

namespace dsrl::agent {
namespace {

using ::testing::HasSubstr;

class SandboxTest : public ::testing::Test {
protected:
    void SetUp() override {
        std::string why;
        if (!sandbox_available(&why)) GTEST_SKIP() << "no sandbox on this machine: " << why;
    }
    static SandboxResult py(const std::string& code, SandboxLimits limits = {}) {
        return run_sandboxed({"python3", "-I", "-c", code}, limits);
    }
};

TEST_F(SandboxTest, RunsAProgramAndReturnsItsOutput) {
    const SandboxResult r = py("import sys; print(2 + 3); print('oops', file=sys.stderr); sys.exit(4)");
    EXPECT_EQ(r.out, "5\n");
    EXPECT_EQ(r.err, "oops\n");
    EXPECT_EQ(r.exit_code, 4);
    EXPECT_FALSE(r.timed_out);
    SandboxLimits with_input;
    with_input.stdin_text = "21\n";
    EXPECT_EQ(py("print(int(input()) * 2)", with_input).out, "42\n");
}

TEST_F(SandboxTest, NoNetwork) {
    // A port that is open here...
    const int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    ASSERT_EQ(::listen(server, 1), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(server, reinterpret_cast<sockaddr*>(&addr), &len);
    const std::string port = std::to_string(ntohs(addr.sin_port));
    // ... cannot be reached from inside (the namespace's loopback is down and there is no other interface).
    const SandboxResult r =
        py("import socket\ns = socket.socket(); s.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', " + port +
           "))\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)");
    ::close(server);
    EXPECT_THAT(r.out, HasSubstr("refused")) << r.out << r.err;
    const SandboxResult outside = py("import socket\nprint(len(socket.if_nameindex()))");
    EXPECT_EQ(outside.out, "1\n") << "only the (down) loopback interface: " << outside.err;
}

TEST_F(SandboxTest, CpuMemoryAndWallLimits) {
    SandboxLimits cpu;
    cpu.cpu_s = 1;
    const SandboxResult spin = py("while True: pass", cpu);
    EXPECT_TRUE(spin.signal == SIGXCPU || spin.signal == SIGKILL) << "signal " << spin.signal;
    EXPECT_FALSE(spin.timed_out);
    SandboxLimits mem;
    mem.memory_mb = 256;
    const SandboxResult big = py("x = bytearray(2_000_000_000)", mem);
    EXPECT_NE(big.exit_code, 0);
    EXPECT_THAT(big.err, HasSubstr("MemoryError"));
    SandboxLimits wall;
    wall.wall_s = 0.5;
    const SandboxResult sleeper = py("import time; time.sleep(30)", wall);
    EXPECT_TRUE(sleeper.timed_out);
    EXPECT_EQ(sleeper.signal, SIGKILL);
    SandboxLimits out;
    out.max_output = 100;
    const SandboxResult chatty = py("print('x' * 10000)", out);
    EXPECT_EQ(chatty.out.size(), 100u);
    EXPECT_TRUE(chatty.truncated);
}

TEST_F(SandboxTest, PrivateDirectoryEmptyEnvironmentAndErrors) {
    ::setenv("DSRL_SANDBOX_TEST_SECRET", "1", 1);  // the trainer's environment must not reach the program
    const SandboxResult r = py(
        "import os\nopen('f.txt', 'w').write('x')\nprint(os.getcwd())\n"
        "print('secret' if 'DSRL_SANDBOX_TEST_SECRET' in os.environ else 'clean', os.environ['HOME'] == os.getcwd())");
    ::unsetenv("DSRL_SANDBOX_TEST_SECRET");
    const std::string cwd = r.out.substr(0, r.out.find('\n'));
    EXPECT_THAT(cwd, HasSubstr("dsrl_sandbox_"));
    EXPECT_FALSE(fs::exists(cwd)) << "the working directory is removed afterwards";
    EXPECT_THAT(r.out, HasSubstr("clean True")) << r.out << r.err;
    EXPECT_THROW(run_sandboxed({"/no/such/program"}), SandboxError);
    EXPECT_THROW(run_sandboxed({}), SandboxError);
}

}  // namespace
}  // namespace dsrl::agent
