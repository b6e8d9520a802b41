// The file:// transport: far memory in a file or on a block device, an SSD tier
// on one machine. A path that does not exist (or a file made in a directory) is
// created sparse and unlinked at once, so it is gone at exit even after a crash;
// a block device is used as it is (opened O_EXCL, so never a mounted one).
// Pages move with io_uring and O_DIRECT: one ring per queue pair (per core),
// posts queue SQEs, submit() is one io_uring_submit for the batch, and poll()
// reaps CQEs without a system call. No thread of our own: the loop that polls
// the other queue pairs reaps these completions too.
// Requests may be any multiple of 512 bytes at any 512-byte offset, from a
// 512-byte aligned buffer (a codec above us stores pieces smaller than a page).
#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <deque>
#include <random>
#include <string>
#include <vector>

#include "farmem/runtime.hpp"
#include "transport/file/file_transport.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"

namespace farmem::net {
namespace {

constexpr unsigned kRingDepth = 256;
constexpr std::uint32_t kMinAlign = 512;  // what callers may rely on, whatever the disk allows
constexpr std::uint64_t kDefaultFar = 64ull << 30;

std::string mib(std::uint64_t b) { return std::to_string(b >> 20) + " MiB"; }

std::string json_escaped(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

// The open file or device, shared by the transport and its queue pairs (which
// may outlive it: the runtime drops its cores after its transport).
struct Store {
  std::string uri;        // as the user wrote it, for messages
  std::string path;       // the file or device actually used
  std::string where;      // the directory (or device) named in messages about space
  int fd = -1;
  bool device = false;
  bool survive = false;   // a pool member: I/O errors fail requests instead of ending us
  std::uint64_t size = 0;
  std::uint32_t block = kMinAlign;      // offset and length alignment for O_DIRECT
  std::uint32_t mem_align = kMinAlign;  // buffer alignment
  std::atomic<bool> punch_ok{true};     // cleared when the file system cannot punch holes
  bool forked_child = false;            // set in a fork's child: the file is the parent's
  std::atomic<std::uint64_t> reads{0}, writes{0}, bytes_read{0}, bytes_written{0}, discards{0};

  ~Store() {
    if (fd >= 0) close(fd);
  }
};

std::string parse_path(const std::string& uri) {
  const std::string prefix = "file://";
  std::string p = uri.rfind(prefix, 0) == 0 ? uri.substr(prefix.size()) : std::string();
  if (p.empty() || p[0] != '/')
    throw Error("FARMEM_BACKEND=" + uri + " names no absolute path; write file:///PATH (file:// and then /PATH)");
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  return p;
}

std::string parent_dir(const std::string& path) {
  std::size_t slash = path.rfind('/');
  return slash == 0 ? "/" : path.substr(0, slash);
}

// Creates `path` (O_EXCL) and unlinks it; -1 with errno EEXIST if it is there.
int create_unlinked(Store& s, const std::string& path) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    if (e == EEXIST) return -1;
    const std::string head = s.uri + ": cannot create " + path + " (" + detail::errno_text(e) + "); ";
    if (e == EROFS) throw Error(head + "the file system is read-only: name a directory on a writable one");
    if (e == EACCES || e == EPERM) throw Error(head + "name a directory this user may write to");
    if (e == ENOSPC || e == EDQUOT) throw Error(head + "the disk under " + s.where + " is full: free space there");
    throw Error(head + "name another directory");
  }
  unlink(path.c_str());  // removed at exit, however we exit; the space is freed when fd closes
  return fd;
}

void open_file(Store& s, std::uint64_t bytes, bool in_dir, const std::string& named) {
  if (in_dir) {
    std::random_device rd;
    for (int attempt = 0; attempt < 100 && s.fd < 0; ++attempt) {
      char name[64];
      std::snprintf(name, sizeof name, "/farmem-%d-%08x", static_cast<int>(getpid()), rd());
      s.path = named + name;
      s.fd = create_unlinked(s, s.path);
    }
    if (s.fd < 0) throw Error(s.uri + ": cannot make a unique file in " + named + "; clean it up");
  } else {
    s.path = named;
    s.fd = create_unlinked(s, named);
    if (s.fd < 0) throw Error(s.uri + ": " + named + " appeared while we created it; name another path");
  }
  // O_DIRECT set after the file exists, so a file system without it leaves no file behind.
  if (fcntl(s.fd, F_SETFL, fcntl(s.fd, F_GETFL) | O_DIRECT) != 0)
    throw Error(s.uri + ": the file system under " + s.where + " does not support O_DIRECT (" +
                detail::errno_text(errno) + "); name a directory on ext4, xfs, btrfs or tmpfs");
  if (ftruncate(s.fd, static_cast<off_t>(bytes)) != 0)
    throw Error(s.uri + ": the file system under " + s.where + " cannot hold a file of " + mib(bytes) + " (" +
                detail::errno_text(errno) + "); lower FARMEM_FAR_MEM");
  s.size = bytes;
  // Direct I/O alignment: the kernel says (statx, 6.1+), or a 512-byte probe decides.
  struct statx sx{};
  if (statx(s.fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN) &&
      sx.stx_dio_offset_align != 0) {
    s.block = std::max(kMinAlign, sx.stx_dio_offset_align);
    s.mem_align = std::max(kMinAlign, sx.stx_dio_mem_align);
    return;
  }
  alignas(4096) static thread_local char probe[4096];
  for (std::uint32_t b : {512u, 4096u}) {
    if (pread(s.fd, probe, b, b) == static_cast<ssize_t>(b)) {
      s.block = s.mem_align = b;
      return;
    }
  }
  throw Error(s.uri + ": direct reads of " + s.path + " fail (" + detail::errno_text(errno) +
              "); name a directory on another file system");
}

void open_device(Store& s, std::uint64_t bytes) {
  s.path = s.where;
  s.device = true;
  // O_EXCL on a block device: refused while it is mounted or a swap area.
  s.fd = open(s.path.c_str(), O_RDWR | O_EXCL | O_DIRECT | O_CLOEXEC);
  if (s.fd < 0) {
    int e = errno;
    const std::string head = s.uri + ": cannot open the device " + s.path + " (" + detail::errno_text(e) + "); ";
    if (e == EBUSY) throw Error(head + "it is in use (mounted, swap, or another program): name a free device");
    if (e == EROFS || e == EACCES || e == EPERM) throw Error(head + "it must be writable by this user");
    if (e == EINVAL) throw Error(head + "it does not support O_DIRECT: name another device or a directory");
    throw Error(head + "name another device or a directory");
  }
  std::uint64_t have = 0;
  int sector = 0;
  if (ioctl(s.fd, BLKGETSIZE64, &have) != 0 || ioctl(s.fd, BLKSSZGET, &sector) != 0)
    throw Error(s.uri + ": cannot read the size of the device " + s.path + " (" + detail::errno_text(errno) + ")");
  if (have < bytes)
    throw Error(s.uri + ": the device " + s.path + " holds " + mib(have) + " but far memory needs " + mib(bytes) +
                "; set FARMEM_FAR_MEM to at most " + mib(have) + " or name a bigger device");
  s.size = bytes;
  s.block = s.mem_align = std::max<std::uint32_t>(kMinAlign, static_cast<std::uint32_t>(sector));
}

std::shared_ptr<Store> open_store(const std::string& uri, std::uint64_t bytes, bool survive) {
  auto s = std::make_shared<Store>();
  s->uri = "FARMEM_BACKEND=" + uri;
  s->survive = survive;
  const std::string named = parse_path(uri);
  struct stat st{};
  if (stat(named.c_str(), &st) == 0) {
    s->where = named;
    if (S_ISDIR(st.st_mode)) open_file(*s, bytes, true, named);
    else if (S_ISBLK(st.st_mode)) open_device(*s, bytes);
    else if (S_ISREG(st.st_mode))
      throw Error(s->uri + ": " + named + " already exists and farmem would overwrite it; remove it, or name a "
                  "directory (a file is made in it), a path that does not exist yet, or a block device");
    else
      throw Error(s->uri + ": " + named + " is not a directory, a new file or a block device; name one of those");
  } else if (errno == ENOENT) {
    s->where = parent_dir(named);
    struct stat dst{};
    if (stat(s->where.c_str(), &dst) != 0)
      throw Error(s->uri + ": the directory " + s->where + " does not exist; create it (mkdir -p " + s->where +
                  ") or name an existing directory");
    if (!S_ISDIR(dst.st_mode)) throw Error(s->uri + ": " + s->where + " is not a directory; fix the path");
    open_file(*s, bytes, false, named);
  } else {
    throw Error(s->uri + ": cannot look at " + named + " (" + detail::errno_text(errno) + "); fix the path");
  }
  return s;
}

// Makes a ring or says why not; 0 or a negative errno.
int make_ring(io_uring* ring) { return io_uring_queue_init(kRingDepth, ring, 0); }

std::string ring_refusal(const Store& s, int err) {
  std::string head = s.uri + ": io_uring is not available here (io_uring_setup: " + detail::errno_text(err) + "); ";
  if (err == ENOMEM) return head + "raise the locked-memory limit (ulimit -l) or use another backend";
  return head + "allow it (sysctl kernel.io_uring_disabled=0, no seccomp filter against it) or use another "
         "backend (shm, tcp://HOST:PORT)";
}

class FileQueuePair final : public QueuePair {
 public:
  explicit FileQueuePair(std::shared_ptr<Store> s) : s_(std::move(s)) {
    // Runs on any thread that starts using far memory: never throws.
    if (int r = make_ring(&ring_); r < 0) detail::fatal("%s", ring_refusal(*s_, -r).c_str());
    cq_entries_ = *ring_.cq.kring_entries;
  }
  ~FileQueuePair() override {
    // The kernel may still be writing into frames: wait for it, unless this is
    // a fork's child, whose ring memory is shared with the parent's.
    if (!s_->forked_child) {
      submit();
      while (outstanding_ > 0) {
        io_uring_cqe* cqe = nullptr;
        if (io_uring_wait_cqe(&ring_, &cqe) != 0) break;
        io_uring_cqe_seen(&ring_, cqe);
        --outstanding_;
      }
    }
    io_uring_queue_exit(&ring_);
  }

  void post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) override {
    queue(Op{cookie, off, static_cast<char*>(local), static_cast<std::uint32_t>(len), false}, len);
  }
  void post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) override {
    queue(Op{cookie, off, static_cast<char*>(const_cast<void*>(local)), static_cast<std::uint32_t>(len), true}, len);
  }

  void submit() override {
    while (queued_ > 0) {
      int r = io_uring_submit(&ring_);
      if (r >= 0) {
        queued_ -= std::min<unsigned>(queued_, static_cast<unsigned>(r));
        continue;
      }
      if (r == -EINTR) continue;
      if (r == -EAGAIN || r == -EBUSY) {  // the kernel wants completions reaped first
        reap_into_done();
        continue;
      }
      detail::fatal("%s: io_uring_submit failed (%s)", s_->uri.c_str(), detail::errno_text(-r));
    }
  }

  std::size_t poll(Completion* out, std::size_t max) override {
    std::size_t n = take_completions(done_, out, max);
    while (n < max && outstanding_ > 0) {
      io_uring_cqe* cqes[64];
      unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, std::min<std::size_t>(max - n, 64));
      if (got == 0) break;
      for (unsigned i = 0; i < got; ++i) {
        Completion c;
        if (finish(cqes[i], &c)) out[n++] = c;
      }
      io_uring_cq_advance(&ring_, got);
      restart();
    }
    return n;
  }

  void wait(unsigned timeout_us) override {
    if (outstanding_ == 0 || !done_.empty()) return;
    submit();  // waiting for a request the kernel has not been given would be in vain
    __kernel_timespec ts{0, static_cast<long long>(timeout_us) * 1000};
    io_uring_cqe* cqe = nullptr;
    io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);  // leaves the CQE for poll()
  }

 private:
  struct Op {
    std::uint64_t cookie;
    std::uint64_t off;
    char* buf;
    std::uint32_t len;
    bool write;
  };

  void queue(const Op& op, std::size_t len) {
    const Store& s = *s_;
    if (s.forked_child)
      detail::fatal("%s: a forked child cannot use far memory on a file (it is the parent's); exec() after "
                    "fork, or use FARMEM_BACKEND=shm",
                    s.uri.c_str());
    const std::uint64_t bad_off = (op.off | len) & (s.block - 1);
    if (len == 0 || len > (1u << 30) || bad_off || reinterpret_cast<std::uintptr_t>(op.buf) & (s.mem_align - 1))
      detail::fatal("%s: a %s of %zu bytes at offset %llu from buffer %p is not aligned to %u-byte blocks and "
                    "%u-byte buffers (a farmem bug: please report it)",
                    s.uri.c_str(), op.write ? "write" : "read", len, static_cast<unsigned long long>(op.off),
                    static_cast<void*>(op.buf), s.block, s.mem_align);
    if (op.off + len > s.size)
      detail::fatal("%s: a %s of %zu bytes at offset %llu is past the end of far memory (%llu bytes; a farmem bug)",
                    s.uri.c_str(), op.write ? "write" : "read", len, static_cast<unsigned long long>(op.off),
                    static_cast<unsigned long long>(s.size));
    std::uint32_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
      ops_[slot] = op;
    } else {
      slot = static_cast<std::uint32_t>(ops_.size());
      ops_.push_back(op);
    }
    start(slot);
  }

  // Puts ops_[slot] in an SQE (submitting and reaping first if the rings are full).
  void start(std::uint32_t slot) {
    while (outstanding_ >= cq_entries_) {  // never more in flight than the CQ holds
      submit();
      io_uring_cqe* cqe = nullptr;
      io_uring_wait_cqe(&ring_, &cqe);
      reap_into_done();
    }
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      submit();
      sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) detail::fatal("%s: the io_uring submission queue stays full", s_->uri.c_str());
    }
    const Op& op = ops_[slot];
    if (op.write) io_uring_prep_write(sqe, s_->fd, op.buf, op.len, op.off);
    else io_uring_prep_read(sqe, s_->fd, op.buf, op.len, op.off);
    io_uring_sqe_set_data64(sqe, slot);
    ++queued_;
    ++outstanding_;
  }

  void reap_into_done() {
    io_uring_cqe* cqes[64];
    while (unsigned got = io_uring_peek_batch_cqe(&ring_, cqes, 64)) {
      for (unsigned i = 0; i < got; ++i) {
        Completion c;
        if (finish(cqes[i], &c)) done_.push_back(c);
      }
      io_uring_cq_advance(&ring_, got);
      restart();
    }
  }

  // Requests that must go again (short or interrupted), once their CQEs are consumed.
  void restart() {
    if (retry_.empty()) return;
    std::vector<std::uint32_t> again;
    again.swap(retry_);
    for (std::uint32_t slot : again) start(slot);
    submit();
  }

  // One CQE: true with *c set when its request is over; false when the rest of
  // a short transfer (or a retry) is to go again (retry_).
  bool finish(const io_uring_cqe* cqe, Completion* c) {
    --outstanding_;
    const std::uint32_t slot = static_cast<std::uint32_t>(cqe->user_data);
    Op& op = ops_[slot];
    const int res = cqe->res;
    if (res > 0 && static_cast<std::uint32_t>(res) < op.len && (res & (s_->block - 1)) == 0) {
      op.off += static_cast<std::uint32_t>(res);  // short: the rest goes again
      op.buf += res;
      op.len -= static_cast<std::uint32_t>(res);
      count(op.write, static_cast<std::uint32_t>(res), false);
      retry_.push_back(slot);
      return false;
    }
    if (res == -EAGAIN || res == -EINTR) {
      retry_.push_back(slot);
      return false;
    }
    *c = Completion{op.cookie};
    free_.push_back(slot);
    if (res >= 0 && static_cast<std::uint32_t>(res) == op.len) {
      count(op.write, op.len, true);
      return true;
    }
    const int err = res < 0 ? -res : EIO;
    if (op.write && (err == ENOSPC || err == EDQUOT))
      detail::fatal("far memory is full: the disk under %s is full (a page write failed: %s); free space there, "
                    "or give the program more local memory",
                    s_->where.c_str(), detail::errno_text(err));
    if (!s_->survive)
      detail::fatal("%s: a page %s at offset %llu failed (%s); far memory there is lost: check the disk "
                    "(dmesg) and restart the application",
                    s_->uri.c_str(), op.write ? "write" : "read", static_cast<unsigned long long>(op.off),
                    res < 0 ? detail::errno_text(err) : "short transfer");
    c->failed = true;  // a pool reads and writes elsewhere
    return true;
  }

  void count(bool write, std::uint32_t bytes, bool whole) {
    Store& s = *s_;
    (write ? s.bytes_written : s.bytes_read).fetch_add(bytes, std::memory_order_relaxed);
    if (whole) (write ? s.writes : s.reads).fetch_add(1, std::memory_order_relaxed);
  }

  std::shared_ptr<Store> s_;
  io_uring ring_{};
  unsigned cq_entries_ = 0;
  unsigned queued_ = 0;       // SQEs not yet submitted
  unsigned outstanding_ = 0;  // requests posted and not yet reaped
  std::vector<Op> ops_;
  std::vector<std::uint32_t> free_;
  std::vector<std::uint32_t> retry_;
  std::deque<Completion> done_;
};

class FileTransport final : public Transport {
 public:
  FileTransport(const Config& cfg, const MemberOptions* member) {
    const std::string& uri = member ? member->uri : cfg.backend;
    const std::uint64_t bytes = member ? member->capacity : cfg.far_mem_bytes ? cfg.far_mem_bytes : kDefaultFar;
    s_ = open_store(uri, (bytes + 4095) & ~std::uint64_t{4095}, member != nullptr);
    io_uring probe{};  // io_uring refused is said now, not at the first eviction
    if (int r = make_ring(&probe); r < 0) throw Error(ring_refusal(*s_, -r));
    io_uring_queue_exit(&probe);
  }

  std::unique_ptr<QueuePair> create_qp() override { return std::make_unique<FileQueuePair>(s_); }

  void discard(std::uint64_t off, std::uint64_t len) override {
    Store& s = *s_;
    if (s.forked_child) return;  // the parent's far memory
    const std::uint64_t end = std::min(off + len, s.size);
    off = (off + s.block - 1) & ~std::uint64_t{s.block - 1};  // whole blocks only
    if (end <= off) return;
    len = (end - off) & ~std::uint64_t{s.block - 1};
    if (len == 0 || !s.punch_ok.load(std::memory_order_relaxed)) return;
    s.discards.fetch_add(1, std::memory_order_relaxed);
    if (s.device) {
      std::uint64_t range[2] = {off, len};
      if (ioctl(s.fd, BLKDISCARD, range) != 0 && (errno == EOPNOTSUPP || errno == ENOTTY)) s.punch_ok.store(false);
    } else if (fallocate(s.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, static_cast<off_t>(off),
                         static_cast<off_t>(len)) != 0 &&
               errno == EOPNOTSUPP) {
      s.punch_ok.store(false);  // the space stays allocated until exit; nothing is wrong
    }
  }

  std::uint64_t remote_usage() override {
    if (s_->device) return 0;  // a device does not say which blocks hold data
    struct stat st{};
    return fstat(s_->fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_blocks) * 512 : 0;
  }

  void shutdown() override {}  // the file goes when the last queue pair closes it (it is unlinked)

  std::string describe() const override {
    return "file://" + s_->path + (s_->device ? " (block device, " : " (sparse file, unlinked, ") + mib(s_->size) +
           ", " + std::to_string(s_->block) + "-byte blocks)";
  }

  std::string stats_json() const override {
    const Store& s = *s_;
    auto n = [](const std::atomic<std::uint64_t>& a) { return std::to_string(a.load(std::memory_order_relaxed)); };
    return "\"file\":{\"path\":\"" + json_escaped(s.path) + "\",\"device\":" + (s.device ? "true" : "false") +
           ",\"block_bytes\":" + std::to_string(s.block) + ",\"reads\":" + n(s.reads) + ",\"writes\":" + n(s.writes) +
           ",\"bytes_read\":" + n(s.bytes_read) + ",\"bytes_written\":" + n(s.bytes_written) +
           ",\"discards\":" + n(s.discards) +
           ",\"allocated_bytes\":" + std::to_string(const_cast<FileTransport*>(this)->remote_usage()) + "}";
  }

  // No snapshot for a child: the parent goes on writing the same file. The
  // child is told so if it reads far memory (hw/region.cc), and never touches
  // the parent's file or rings.
  void fork_child() override { s_->forked_child = true; }

 private:
  std::shared_ptr<Store> s_;
};

}  // namespace

std::unique_ptr<Transport> connect_file(const Config& cfg) { return std::make_unique<FileTransport>(cfg, nullptr); }

std::unique_ptr<Transport> connect_file_member(const Config& cfg, const MemberOptions& member) {
  return std::make_unique<FileTransport>(cfg, &member);
}

}  // namespace farmem::net
