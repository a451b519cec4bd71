// Shared helpers of the libFuzzer harnesses (docs/fuzzing.md). Each harness feeds the fuzzer's bytes to one
// parser of outside input. A documented rejection — a dsrl::Error subclass (DataError, ConfigError,
// CheckpointError) or a c10::Error from a tensor contract — is the parser doing its job; anything else (an
// uncaught exception of another type, a crash, a sanitizer report, a leak, a hang, out-of-memory) is a finding.
//
//   extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
//       return dsrl::fuzz::run([&] { parse(std::string(reinterpret_cast<const char*>(data), size)); });
//   }
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <c10/util/Exception.h>

#include "core/error.h"

namespace dsrl::fuzz {

/// Prints each rejection's message when DSRL_FUZZ_VERBOSE is set (to check that seeds are accepted, or why not).
inline void rejected(const char* kind, const char* what) {
    static const bool verbose = std::getenv("DSRL_FUZZ_VERBOSE") != nullptr;
    if (verbose) std::fprintf(stderr, "[fuzz] rejected (%s): %s\n", kind, what);
}

/// Runs `fn` on one input; a documented rejection returns normally, other exceptions escape (a finding).
template <class Fn>
int run(Fn&& fn) {
    try {
        fn();
    } catch (const dsrl::Error& e) {
        rejected("dsrl::Error", e.what());
    } catch (const c10::Error& e) {
        rejected("c10::Error", e.what_without_backtrace());
    }
    return 0;
}

/// A private directory for the harness's files, made once per process under $TMPDIR (else /tmp); scripts/fuzz.sh
/// points TMPDIR at a directory it removes afterwards.
inline const std::string& temp_dir() {
    static const std::string dir = [] {
        const char* base = std::getenv("TMPDIR");
        std::string templ = std::string(base != nullptr && *base != 0 ? base : "/tmp") + "/dsrl_fuzz_XXXXXX";
        if (mkdtemp(templ.data()) == nullptr) {
            std::perror("dsrl fuzz: mkdtemp");
            std::abort();
        }
        return templ;
    }();
    return dir;
}

/// Writes `bytes` to `path` (truncating); aborts on an IO error (the harness's problem, not the parser's).
inline void write_file(const std::string& path, const std::string& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    if (f == nullptr || std::fwrite(bytes.data(), 1, bytes.size(), f) != bytes.size() || std::fclose(f) != 0) {
        std::perror(("dsrl fuzz: writing " + path).c_str());
        std::abort();
    }
}

inline std::string bytes_of(const uint8_t* data, size_t size) {
    return std::string(reinterpret_cast<const char*>(data), size);
}

}  // namespace dsrl::fuzz
