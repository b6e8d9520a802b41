#pragma once
#include <cstdarg>

namespace farmem::detail {
// An unrecoverable runtime failure (memory server gone, frames deadlocked): print
// one line "farmem: ..." on stderr and exit with status 1. Never returns.
[[noreturn, gnu::format(printf, 1, 2)]] void fatal(const char* fmt, ...);
}  // namespace farmem::detail
