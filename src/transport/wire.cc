// Header validation for the wire protocol: the one place that decides whether
// bytes from the network are a well-formed message.
#include "transport/wire.hpp"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "farmem/runtime.hpp"
#include "transport/auth.hpp"

namespace farmem::net::wire {

bool read_token_file(const std::string& path, std::string* token) {
  std::ifstream f(path);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *token = ss.str();
  while (!token->empty() && (token->back() == '\n' || token->back() == '\r' || token->back() == ' '))
    token->pop_back();
  return true;
}

std::string read_client_token(const std::string& path, std::size_t max) {
  if (path.empty()) return {};
  std::string t;
  if (!read_token_file(path, &t)) throw Error("cannot read FARMEM_TOKEN_FILE=" + path + ": " + std::strerror(errno));
  if (t.size() > max)
    throw Error("FARMEM_TOKEN_FILE=" + path + " holds more than " + std::to_string(max) + " bytes");
  return t;
}

Errc validate(const Header& h, bool from_server, std::string* why) {
  auto fail = [&](Errc e, const char* msg) {
    if (why) *why = msg;
    return e;
  };
  if (h.magic != kMagic) return fail(Errc::BadMessage, "bad magic");
  if (h.version != kVersion) return fail(Errc::Version, "unsupported protocol version");  // see version_refusal
  if (h.length > kMaxPayload) return fail(Errc::BadMessage, "payload too large");
  if (h.reserved != 0) return fail(Errc::BadMessage, "reserved field set");
  const auto op = static_cast<Op>(h.op);
  if (from_server) {
    if (op != Op::Reply && op != Op::Error && op != Op::Challenge) return fail(Errc::BadMessage, "unexpected op from server");
    if (op == Op::Challenge && h.length != auth::kNonce) return fail(Errc::BadMessage, "bad challenge");
    if (op == Op::Error && h.status == 0) return fail(Errc::BadMessage, "error without a code");
    return Errc::Ok;
  }
  switch (op) {
    case Op::Hello:
      if (h.length != 0) return fail(Errc::BadMessage, "a hello carries no token (version 2 proves it)");
      if (h.size > 1) return fail(Errc::BadMessage, "bad hello mode");
      return Errc::Ok;
    case Op::Prove:
      if (h.length != auth::kNonce + auth::kMac) return fail(Errc::BadMessage, "bad proof");
      return Errc::Ok;
    case Op::Read:
    case Op::Discard:
      if (h.length != 0) return fail(Errc::BadMessage, "unexpected payload");
      if (h.size == 0 || h.size % kUnit || h.offset % kUnit)
        return fail(Errc::BadMessage, "unaligned range");
      if (op == Op::Read && h.size > kMaxPayload) return fail(Errc::BadMessage, "read too large");
      return Errc::Ok;
    case Op::Write:
      if (h.size != h.length || h.size == 0 || h.size % kUnit || h.offset % kUnit)
        return fail(Errc::BadMessage, "bad write size");
      return Errc::Ok;
    case Op::Usage:
      if (h.length != 0) return fail(Errc::BadMessage, "unexpected payload");
      return Errc::Ok;
    default:
      return fail(Errc::BadMessage, "unknown op");
  }
}

std::string version_refusal(std::uint16_t peer, const char* peer_is) {
  return "farmem protocol version " + std::to_string(peer) + " is not supported: this " +
         (std::string(peer_is) == "client" ? "farmem-server" : "client") + " speaks version " +
         std::to_string(kVersion) + "; run the same farmem release on the " + peer_is + " and the " +
         (std::string(peer_is) == "client" ? "server" : "client");
}

}  // namespace farmem::net::wire
