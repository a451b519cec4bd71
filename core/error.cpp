#include "core/error.h"

namespace dsrl::detail {

void throw_internal(const char* file, int line, const char* cond, const std::string& msg) {
    throw InternalError(absl::StrCat("dsrl bug: ", file, ":", line, ": check '", cond, "' failed",
                                     msg.empty() ? "" : ": ", msg, " (please report this)"));
}

}  // namespace dsrl::detail
