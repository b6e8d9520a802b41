// A tcp:// connection's bytes, in the clear or under TLS (see stream.hpp).
#include "transport/tcp/stream.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "farmem/runtime.hpp"
#include "runtime/os.hpp"

namespace farmem::net::tcp {
namespace {

// What send() takes at once under TLS: 16 records, so a batch of pages is
// encrypted in few calls and the caller's buffers can be reused at once.
constexpr std::size_t kTlsChunk = 256 * 1024;

// This thread's OpenSSL errors as one text (and the queue cleared); `dflt` when there are none.
std::string openssl_errors(const char* dflt) {
  std::string out;
  char buf[256];
  std::string seen;  // lower case, to drop a reason another one already says ("no such file", "system lib")
  while (unsigned long e = ERR_get_error()) {
    ERR_error_string_n(e, buf, sizeof buf);
    // "error:0A000086:SSL routines::certificate verify failed": the reason is after the last ':'.
    const char* r = std::strrchr(buf, ':');
    std::string reason = r && r[1] ? r + 1 : buf, lower = reason;
    for (char& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (lower == "system lib" || seen.find(lower) != std::string::npos) continue;
    seen += lower + "|";
    if (!out.empty()) out += "; ";
    out += reason;
  }
  return out.empty() ? dflt : out;
}

SSL_CTX* new_ctx(const SSL_METHOD* method) {
  SSL_CTX* c = SSL_CTX_new(method);
  if (!c) throw Error("TLS: cannot make an OpenSSL context: " + openssl_errors("out of memory"));
  SSL_CTX_set_min_proto_version(c, TLS1_3_VERSION);
  // A peer that closes without close_notify is a closed connection, not an error.
  SSL_CTX_set_options(c, SSL_OP_IGNORE_UNEXPECTED_EOF);
  SSL_CTX_set_mode(c, SSL_MODE_ENABLE_PARTIAL_WRITE);
  return c;
}

// The socket under a TLS connection, written with MSG_NOSIGNAL: OpenSSL's own
// socket BIO write()s, and a server that went away would then kill the program
// with SIGPIPE instead of being reported (a pool goes on without it).
int bio_write(BIO* b, const char* buf, int len) {
  BIO_clear_retry_flags(b);
  ssize_t n = ::send(static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b))), buf,
                     static_cast<std::size_t>(len), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_write(b);
  return static_cast<int>(n);
}
int bio_read(BIO* b, char* buf, int len) {
  BIO_clear_retry_flags(b);
  ssize_t n = ::recv(static_cast<int>(reinterpret_cast<std::intptr_t>(BIO_get_data(b))), buf,
                     static_cast<std::size_t>(len), MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_read(b);
  return static_cast<int>(n);
}
long bio_ctrl(BIO*, int cmd, long, void*) { return cmd == BIO_CTRL_FLUSH ? 1 : 0; }
int bio_create(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

BIO* socket_bio(int fd) {
  static BIO_METHOD* method = [] {
    BIO_METHOD* m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "farmem socket");
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    return m;
  }();
  BIO* b = BIO_new(method);
  if (b) BIO_set_data(b, reinterpret_cast<void*>(static_cast<std::intptr_t>(fd)));
  return b;
}

// The connection's SSL over fd, or null (out of memory).
SSL* new_ssl(const TlsContext& ctx, int fd) {
  SSL* s = SSL_new(ctx.get());
  BIO* b = s ? socket_bio(fd) : nullptr;
  if (!b) {
    SSL_free(s);
    return nullptr;
  }
  SSL_set_bio(s, b, b);  // s owns b
  return s;
}

bool is_address(const std::string& host) {
  unsigned char a[16];
  return inet_pton(AF_INET, host.c_str(), a) == 1 || inet_pton(AF_INET6, host.c_str(), a) == 1;
}

}  // namespace

std::shared_ptr<TlsContext> TlsContext::client(const std::string& ca_file) {
  SSL_CTX* c = new_ctx(TLS_client_method());
  std::shared_ptr<TlsContext> t(new TlsContext(c));
  SSL_CTX_set_verify(c, SSL_VERIFY_PEER, nullptr);
  if (ca_file.empty() ? SSL_CTX_set_default_verify_paths(c) != 1
                      : SSL_CTX_load_verify_locations(c, ca_file.c_str(), nullptr) != 1)
    throw Error(ca_file.empty() ? "TLS: cannot load the system's CA certificates (" + openssl_errors("?") +
                                      "); set FARMEM_TLS_CA to the CA file that signed the server's certificate"
                                : "FARMEM_TLS_CA=" + ca_file + " cannot be loaded (" + openssl_errors("?") +
                                      "); it must name a PEM file of CA certificates");
  return t;
}

std::shared_ptr<TlsContext> TlsContext::server(const std::string& cert_file, const std::string& key_file) {
  SSL_CTX* c = new_ctx(TLS_server_method());
  std::shared_ptr<TlsContext> t(new TlsContext(c));
  SSL_CTX_set_num_tickets(c, 0);  // nothing to resume, and no message after the handshake
  if (SSL_CTX_use_certificate_chain_file(c, cert_file.c_str()) != 1)
    throw Error("--tls-cert " + cert_file + " cannot be loaded (" + openssl_errors("?") +
                "); it must be a PEM certificate (chain)");
  if (SSL_CTX_use_PrivateKey_file(c, key_file.c_str(), SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(c) != 1) {
    const std::string why = openssl_errors("?");
    if (why.find("mismatch") != std::string::npos)
      throw Error("--tls-key " + key_file + " is not the key of --tls-cert " + cert_file + "; give the matching pair");
    throw Error("--tls-key " + key_file + " cannot be loaded (" + why + "); it must be a PEM private key");
  }
  return t;
}

TlsContext::~TlsContext() { SSL_CTX_free(ctx_); }

Stream::Stream(int fd) : fd_(fd) { fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK); }

Stream::~Stream() {
  if (ssl_) SSL_free(ssl_);
  if (fd_ >= 0) close(fd_);
}

void Stream::start_tls_client(const TlsContext& ctx, const std::string& host, const std::string& uri,
                              int timeout_ms) {
  ssl_ = new_ssl(ctx, fd_);
  if (!ssl_) throw Error("TLS to the memory server " + uri + ": " + openssl_errors("out of memory"));
  if (is_address(host)) {
    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl_), host.c_str());
  } else {
    SSL_set_tlsext_host_name(ssl_, host.c_str());
    SSL_set1_host(ssl_, host.c_str());
  }
  const std::uint64_t deadline = detail::now_ns() + static_cast<std::uint64_t>(timeout_ms) * 1000000ull;
  for (;;) {
    ERR_clear_error();
    int r = SSL_connect(ssl_);
    if (r == 1) return;
    int e = SSL_get_error(ssl_, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
      const std::uint64_t now = detail::now_ns();
      pollfd p{fd_, static_cast<short>(e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT), 0};
      if (now < deadline && ::poll(&p, 1, static_cast<int>((deadline - now) / 1000000 + 1)) > 0) continue;
      throw Error("the memory server " + uri + " did not finish the TLS handshake within " +
                  std::to_string(timeout_ms / 1000) + " s; is it a farmem-server listening on tcp+tls://?");
    }
    long verify = SSL_get_verify_result(ssl_);
    if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH)
      throw Error("the memory server " + uri + "'s certificate is not issued for " + host + " (" +
                  X509_verify_cert_error_string(verify) + "); connect by a name or address in its " +
                  "subjectAltName, or reissue its --tls-cert for " + host);
    if (verify != X509_V_OK)
      throw Error("the memory server " + uri + "'s certificate is not accepted (" +
                  X509_verify_cert_error_string(verify) + "); set FARMEM_TLS_CA to the CA (or the certificate) " +
                  "that signed its --tls-cert");
    const std::string why = e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0
                                ? std::string(errno ? detail::errno_text(errno) : "connection closed")
                                : openssl_errors("handshake failed");
    throw Error("the memory server " + uri + " did not answer TLS (" + why +
                "); is it listening on tcp+tls:// (farmem-server --tls-cert)? use tcp:// for one that is not");
  }
}

bool Stream::start_tls_server(const TlsContext& ctx) {
  ssl_ = new_ssl(ctx, fd_);
  if (ssl_) SSL_set_accept_state(ssl_);
  return ssl_ != nullptr;
}

ssize_t Stream::ssl_result(int r, bool reading) {
  int e = SSL_get_error(ssl_, r);
  want_write_ = e == SSL_ERROR_WANT_WRITE;
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
    errno = EAGAIN;
    return -1;
  }
  if (reading && e == SSL_ERROR_ZERO_RETURN) return 0;
  if (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
    if (errno == 0 && reading) return 0;
    error_ = detail::errno_text(errno ? errno : ECONNRESET);
    if (!errno) errno = ECONNRESET;
    return -1;
  }
  error_ = "TLS: " + openssl_errors("protocol error");
  errno = EPROTO;
  return -1;
}

ssize_t Stream::send(const iovec* iov, int n) {
  if (!ssl_) {
    msghdr m{};
    m.msg_iov = const_cast<iovec*>(iov);
    m.msg_iovlen = static_cast<std::size_t>(n);
    ssize_t r = sendmsg(fd_, &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r < 0) error_ = detail::errno_text(errno);
    return r;
  }
  if (!flush()) return -1;
  // Taken into the buffer now (the caller may reuse its memory), encrypted as the socket takes it.
  wbuf_.clear();
  wpos_ = 0;
  for (int i = 0; i < n && wbuf_.size() < kTlsChunk; ++i) {
    std::size_t take = std::min(iov[i].iov_len, kTlsChunk - wbuf_.size());
    const char* p = static_cast<const char*>(iov[i].iov_base);
    wbuf_.insert(wbuf_.end(), p, p + take);
  }
  const ssize_t taken = static_cast<ssize_t>(wbuf_.size());
  if (!flush() && errno != EAGAIN) return -1;
  return taken;
}

bool Stream::flush() {
  if (!ssl_) return true;
  while (wpos_ < wbuf_.size()) {
    ERR_clear_error();
    int r = SSL_write(ssl_, wbuf_.data() + wpos_, static_cast<int>(wbuf_.size() - wpos_));
    if (r <= 0) return ssl_result(r, false), false;
    wpos_ += static_cast<std::size_t>(r);
  }
  want_write_ = false;
  return true;
}

ssize_t Stream::recv(void* buf, std::size_t len) {
  if (!ssl_) {
    ssize_t r = ::recv(fd_, buf, len, MSG_DONTWAIT);
    if (r < 0) error_ = detail::errno_text(errno);
    return r;
  }
  ERR_clear_error();
  errno = 0;
  int r = SSL_read(ssl_, buf, static_cast<int>(std::min<std::size_t>(len, 1u << 30)));
  if (r > 0) {
    want_write_ = false;
    return r;
  }
  return ssl_result(r, true);
}

bool Stream::buffered() const { return ssl_ && SSL_pending(ssl_) > 0; }

bool Stream::wait_readable(int timeout_ms) {
  if (buffered()) return true;
  pollfd p{fd_, static_cast<short>(POLLIN | (want_write_ ? POLLOUT : 0)), 0};
  return ::poll(&p, 1, timeout_ms) > 0;
}

bool Stream::read_full(void* buf, std::size_t len, int timeout_ms) {
  char* p = static_cast<char*>(buf);
  while (len) {
    ssize_t n = recv(p, len);
    if (n == 0) {
      error_ = "connection closed";
      return false;
    }
    if (n < 0) {
      if (errno != EAGAIN && errno != EINTR) return false;
      if (!wait_readable(timeout_ms)) {
        error_ = "timed out";
        return false;
      }
      continue;
    }
    p += n;
    len -= static_cast<std::size_t>(n);
  }
  return true;
}

bool Stream::write_full(const iovec* iov, int n, int timeout_ms) {
  std::vector<iovec> left(iov, iov + n);
  std::size_t i = 0;
  auto wait_out = [&] {
    pollfd p{fd_, POLLOUT, 0};
    if (::poll(&p, 1, timeout_ms) > 0) return true;
    error_ = "timed out";
    return false;
  };
  while (i < left.size()) {
    ssize_t r = send(&left[i], static_cast<int>(left.size() - i));
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN || !wait_out()) return false;
      continue;
    }
    std::size_t done = static_cast<std::size_t>(r);
    while (i < left.size() && done >= left[i].iov_len) done -= left[i++].iov_len;
    if (done) {
      left[i].iov_base = static_cast<char*>(left[i].iov_base) + done;
      left[i].iov_len -= done;
    }
  }
  while (unsent()) {
    if (flush()) break;
    if (errno != EAGAIN || !wait_out()) return false;
  }
  return true;
}

}  // namespace farmem::net::tcp
