#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "server/listener.hpp"
#include "transport/tcp/stream.hpp"

namespace farmem::server {

struct TcpServerOptions {
  std::string host = "0.0.0.0";
  std::uint16_t port = 0;  // 0: pick a free port (printed at start)
  std::shared_ptr<net::tcp::TlsContext> tls;  // set: tcp+tls:// (every connection is TLS)
};

// Serves far memory over TCP until ctx.control asks it to stop. Returns the
// exit status: 1 (after one line on stderr) when it cannot listen.
int run_tcp(const TcpServerOptions& opt, ListenerContext& ctx);

}  // namespace farmem::server
