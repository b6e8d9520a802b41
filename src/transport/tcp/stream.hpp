// A tcp:// connection's bytes, in the clear or under TLS (tcp+tls://, OpenSSL's
// libssl): the client's queue pairs and control connection and the server's
// epoll loop read and write through a Stream, so both schemes share one path.
// Sockets are non-blocking; TLS is 1.3 only and resumes nothing (no session
// tickets: a runtime opens its connections once). A client checks the server's
// certificate and its name (or address) against FARMEM_TLS_CA, or the system's
// CAs when that is unset.
#pragma once
#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

typedef struct ssl_st SSL;
typedef struct ssl_ctx_st SSL_CTX;

namespace farmem::net::tcp {

// An SSL_CTX shared by a transport's connections, or by a listener's.
class TlsContext {
 public:
  // A client's: trusts ca_file's certificates (PEM), or the system's when empty.
  // Throws farmem::Error naming the file.
  static std::shared_ptr<TlsContext> client(const std::string& ca_file);
  // A server's: its certificate chain and private key (PEM files). Throws
  // farmem::Error naming the file and the fix.
  static std::shared_ptr<TlsContext> server(const std::string& cert_file, const std::string& key_file);
  ~TlsContext();
  TlsContext(const TlsContext&) = delete;
  TlsContext& operator=(const TlsContext&) = delete;
  SSL_CTX* get() const { return ctx_; }

 private:
  explicit TlsContext(SSL_CTX* c) : ctx_(c) {}
  SSL_CTX* ctx_;
};

class Stream {
 public:
  explicit Stream(int fd);  // owns fd (made non-blocking)
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  // Client: TLS over the connected socket, checking the certificate for `host`
  // (a name or an address). Throws farmem::Error: one line naming `uri` and the fix.
  void start_tls_client(const TlsContext& ctx, const std::string& host, const std::string& uri, int timeout_ms);
  // Server: TLS on an accepted socket; the handshake runs inside the first
  // recv and flush calls. False (out of memory): the connection must be closed.
  bool start_tls_server(const TlsContext& ctx);

  int fd() const { return fd_; }
  bool tls() const { return ssl_ != nullptr; }

  // Like sendmsg(MSG_DONTWAIT): bytes taken (> 0), or -1 with errno (EAGAIN:
  // not now). Under TLS the bytes taken may still be buffered: see unsent().
  ssize_t send(const iovec* iov, int n);
  // Like recv(MSG_DONTWAIT): bytes read, 0 when the peer closed, -1 with errno (EAGAIN: none yet).
  ssize_t recv(void* buf, std::size_t len);
  // TLS: bytes send() took that are not on the socket yet; flush() pushes them
  // (false with errno EAGAIN when the socket is full, or another error).
  bool unsent() const { return wpos_ < wbuf_.size(); }
  bool flush();
  // TLS: decrypted bytes waiting, which poll() on the socket cannot see.
  bool buffered() const;
  // The last recv or flush stopped until the socket is writable (a TLS handshake step).
  bool wants_write() const { return want_write_; }
  // Why the last call failed: OpenSSL's reason, or errno's text.
  const std::string& error() const { return error_; }

  // Blocking helpers (handshakes, the control connection); false on timeout,
  // close or error (see error()).
  bool read_full(void* buf, std::size_t len, int timeout_ms);
  bool write_full(const iovec* iov, int n, int timeout_ms);
  // Waits until the socket is readable (or buffered()); false on timeout.
  bool wait_readable(int timeout_ms);

 private:
  ssize_t ssl_result(int r, bool reading);

  int fd_;
  SSL* ssl_ = nullptr;
  std::vector<char> wbuf_;  // TLS: what send() took, encrypted as it is flushed
  std::size_t wpos_ = 0;
  bool want_write_ = false;
  std::string error_;
};

}  // namespace farmem::net::tcp
