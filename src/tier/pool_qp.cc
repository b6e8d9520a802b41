// The pool's queue pair: a page's pieces written to, and read from, the member
// servers, decoded when a data piece is missing, checked against the page's
// CRC; a piece whose server fails goes elsewhere (see pool_impl.hpp).
#include <cstring>

#include "runtime/fatal.hpp"
#include "tier/pool_impl.hpp"

namespace farmem::tier::impl {

net::QueuePair& PoolQueuePair::qp(unsigned s) {
  const std::uint32_t gen = p_.member(s).gen.load(std::memory_order_acquire);
  if (!qps_[s] || qp_gen_[s] != gen) {  // first use, or the slot took a new server
    if (qps_[s] && inflight_[s]) {
      // Pieces still in flight to the slot's old server: keep polling its queue
      // pair until they fail (it is gone) and go elsewhere.
      qps_[s]->submit();
      orphans_.emplace_back(s, std::move(qps_[s]));
    }
    qps_[s] = p_.member(s).t.load(std::memory_order_acquire)->create_qp();
    qp_gen_[s] = gen;
  }
  return *qps_[s];
}

void PoolQueuePair::submit() {
  for (unsigned s = 0, n = p_.slots(); s < n; ++s)
    if ((dirty_ & (1u << s)) && qps_[s]) qps_[s]->submit();
  dirty_ = 0;
}

void PoolQueuePair::wait(unsigned timeout_us) {
  if (!ready_.empty()) return;
  for (unsigned s = 0, n = p_.slots(); s < n; ++s)
    if (qps_[s] && inflight_[s]) return qps_[s]->wait(timeout_us);
}

unsigned PoolQueuePair::new_op() {
  unsigned i;
  if (!free_.empty()) {
    i = free_.back();
    free_.pop_back();
  } else {
    i = static_cast<unsigned>(ops_.size());
    ops_.emplace_back();
    ops_.back().scratch.resize(p_.scheme.pieces() * p_.scheme.piece_bytes());
    sent_piece_server_.resize(ops_.size() * 16);
  }
  Op& o = ops_[i];
  o.used = true;
  o.outstanding = o.got = o.tried = o.servers_used = o.direct = 0;
  o.into_scratch = o.spare = o.done = false;
  o.attempts = 0;
  ++active_;
  return i;
}

void PoolQueuePair::send_piece(unsigned op, unsigned piece, unsigned server, bool write) {
  Op& o = ops_[op];
  const std::size_t pb = p_.scheme.piece_bytes();
  const std::uint64_t remote = o.page * pb;
  const std::uint64_t cookie = std::uint64_t{op} * 16 + piece;
  sent_piece_server_[op * 16 + piece] = static_cast<unsigned char>(server + 1);
  ++o.outstanding;
  ++inflight_[server];
  dirty_ |= 1u << server;
  if (write) {
    // Data pieces come from the page itself; parity (or a replica's copy of the
    // page) from the scratch buffer encode() filled.
    const unsigned char* src = piece < p_.scheme.k ? o.local + piece * pb
                               : p_.scheme.k == 1 ? o.local
                                                  : o.scratch.data() + (piece - p_.scheme.k) * pb;
    qp(server).post_write(remote, src, pb, cookie);
    p_.pieces_written.fetch_add(1, std::memory_order_relaxed);
    p_.bytes_out.fetch_add(pb, std::memory_order_relaxed);
  } else {
    // Copies (k = 1) are whole pages: any one goes straight into the frame.
    unsigned char* dst = p_.scheme.k == 1 ? o.local
                         : o.into_scratch ? o.scratch.data() + piece * pb
                                          : o.local + piece * pb;
    if (!o.into_scratch) o.direct |= 1u << piece;
    qp(server).post_read(remote, dst, pb, cookie);
    p_.pieces_read.fetch_add(1, std::memory_order_relaxed);
    p_.bytes_in.fetch_add(pb, std::memory_order_relaxed);
  }
}

// Sends a write's piece to the best live server not holding a piece of this
// write; false if there is none left.
bool PoolQueuePair::place_piece(unsigned op, unsigned piece) {
  Op& o = ops_[op];
  unsigned order[kMaxServers];
  const unsigned n = rank_servers(o.page, p_.slots(), p_.up_mask() & ~o.servers_used, order);
  if (n == 0) return false;
  o.servers_used |= 1u << order[0];
  send_piece(op, piece, order[0], true);
  return true;
}

void PoolQueuePair::post_write(std::uint64_t off, const void* local, std::size_t len, std::uint64_t cookie) {
  if (len != kPage || off % kPage) farmem::detail::fatal("the pool writes whole pages (asked %zu bytes at %llu)", len,
                                                 static_cast<unsigned long long>(off));
  const std::uint64_t before = p_.own(off / kPage);
  const std::uint64_t page = off / kPage;
  const unsigned i = start_write(page, local, cookie);
  Op& o = ops_[i];
  o.before = before;
  unsigned order[kMaxServers];
  const unsigned n = rank_servers(page, p_.slots(), p_.up_mask(), order);
  if (n < p_.scheme.k) p_.pages_lost(page, 0);
  for (unsigned piece = 0; piece < p_.scheme.pieces() && piece < n; ++piece) {
    o.servers_used |= 1u << order[piece];
    send_piece(i, piece, order[piece], true);
  }
}

void PoolQueuePair::post_repair(std::uint64_t page, std::uint64_t w, const void* local, std::uint64_t cookie) {
  const unsigned i = start_write(page, local, cookie);
  Op& o = ops_[i];
  o.before = w;
  const std::uint32_t live = p_.up_mask();
  for (unsigned piece = 0; piece < p_.scheme.pieces(); ++piece) {
    const unsigned s = piece_server(w, piece);
    if (s != 0 && (live & (1u << (s - 1)))) {
      o.servers_used |= 1u << (s - 1);
      o.got |= 1u << piece;
    } else {
      w = with_piece(w, piece, 0);
    }
  }
  o.loc = w;
  for (unsigned piece = 0; piece < p_.scheme.pieces(); ++piece)
    if (!(o.got & (1u << piece)) && !place_piece(i, piece)) break;
  if (o.outstanding == 0) {  // nowhere to put them: the page stays as it was
    p_.pieces_moved(o.before, o.loc);
    p_.loc[page].store(o.loc, std::memory_order_release);
    finish(i);
  }
}

unsigned PoolQueuePair::start_write(std::uint64_t page, const void* local, std::uint64_t cookie) {
  const unsigned i = new_op();
  Op& o = ops_[i];
  o.write = true;
  o.cookie = cookie;
  o.page = page;
  o.local = static_cast<unsigned char*>(const_cast<void*>(local));
  o.loc = 0;
  o.sum = page_checksum(local);
  if (p_.scheme.m > 0 && !p_.scheme.replicas) {
    unsigned char* parity[kMaxPieces];
    for (unsigned j = 0; j < p_.scheme.m; ++j) parity[j] = o.scratch.data() + j * p_.scheme.piece_bytes();
    codec_.encode(o.local, parity);
  }
  return i;
}

void PoolQueuePair::post_read(std::uint64_t off, void* local, std::size_t len, std::uint64_t cookie) {
  if (len != kPage || off % kPage) farmem::detail::fatal("the pool reads whole pages (asked %zu bytes at %llu)", len,
                                                 static_cast<unsigned long long>(off));
  const std::uint64_t page = off / kPage;
  const std::uint64_t w = p_.loc[page].load(std::memory_order_acquire) & ~kBusy;
  if (w == 0) {  // never written (or discarded): zeros, as a fresh server gives
    std::memset(local, 0, kPage);
    ready_.push_back({cookie});
    return;
  }
  const unsigned i = new_op();
  Op& o = ops_[i];
  o.write = false;
  o.cookie = cookie;
  o.page = page;
  o.local = static_cast<unsigned char*>(local);
  o.loc = w;
  o.sum = p_.sums[page].load(std::memory_order_acquire);
  plan_read(i);
}

// Asks for the pieces a read still needs: with replicas one copy at a time
// (spread by page over the holders); with a code the K data pieces straight
// into the frame if their servers are up, else any K live pieces to decode.
void PoolQueuePair::plan_read(unsigned op) {
  Op& o = ops_[op];
  const Scheme& sc = p_.scheme;
  const std::uint32_t live = p_.readable_mask();
  auto available = [&](unsigned piece) {
    const unsigned s = piece_server(o.loc, piece);
    return s != 0 && (live & (1u << (s - 1))) && !(o.tried & (1u << piece));
  };
  if (sc.k == 1) {
    const unsigned np = sc.pieces();
    for (unsigned t = 0; t < np; ++t) {
      const unsigned piece = static_cast<unsigned>((o.page + o.attempts + t) % np);
      if (!available(piece)) continue;
      if (t != 0 || o.attempts) p_.degraded_reads.fetch_add(1, std::memory_order_relaxed);
      o.tried |= 1u << piece;
      send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
      return;
    }
    p_.pages_lost(o.page, o.loc);
  }
  // Pieces already here count toward K.
  unsigned have = __builtin_popcount(o.got);
  bool data_all = o.tried == 0;
  for (unsigned piece = 0; piece < sc.k && data_all; ++piece) data_all = available(piece);
  if (data_all) {
    // Hydra's rule: ask one parity piece too and take the first K that arrive,
    // so one slow server does not set the fault's time. All go to the scratch
    // buffer then: a late piece must never land in a frame already handed out.
    unsigned spare = sc.pieces();
    for (unsigned piece = sc.k; p_.spare_read && piece < sc.pieces() && spare == sc.pieces(); ++piece)
      if (available(piece)) spare = piece;
    o.spare = spare < sc.pieces();
    o.into_scratch = o.spare;
    for (unsigned piece = 0; piece < sc.k; ++piece) {
      o.tried |= 1u << piece;
      send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
    }
    if (o.spare) {
      o.tried |= 1u << spare;
      send_piece(op, spare, piece_server(o.loc, spare) - 1, false);
    }
    return;
  }
  if (!o.into_scratch) {
    // Switching to a decode: pieces that went straight to the frame are copied
    // to their place in the scratch buffer.
    for (unsigned piece = 0; piece < sc.k; ++piece)
      if (o.got & (1u << piece))
        std::memcpy(o.scratch.data() + piece * sc.piece_bytes(), o.local + piece * sc.piece_bytes(), sc.piece_bytes());
    o.into_scratch = true;
    p_.degraded_reads.fetch_add(1, std::memory_order_relaxed);
  }
  for (unsigned piece = 0; piece < sc.pieces() && have + o.outstanding < sc.k; ++piece) {
    if (!available(piece)) continue;
    o.tried |= 1u << piece;
    send_piece(op, piece, piece_server(o.loc, piece) - 1, false);
  }
  if (have + o.outstanding < sc.k) p_.pages_lost(o.page, o.loc);
}

void PoolQueuePair::finish(unsigned op, bool failed) {
  Op& o = ops_[op];
  ready_.push_back({o.cookie, failed});
  if (o.outstanding != 0) {
    o.done = true;  // a spare piece is still on its way: the op is freed when it lands
    return;
  }
  release(op);
}

void PoolQueuePair::release(unsigned op) {
  ops_[op].used = false;
  --active_;
  free_.push_back(op);
}

void PoolQueuePair::read_done(unsigned op) {
  Op& o = ops_[op];
  const Scheme& sc = p_.scheme;
  if (o.into_scratch) {
    unsigned have[kMaxPieces];
    const unsigned char* pieces[kMaxPieces];
    unsigned n = 0;
    for (unsigned piece = 0; piece < sc.pieces() && n < sc.k; ++piece)
      if (o.got & (1u << piece)) {
        have[n] = piece;
        pieces[n++] = o.scratch.data() + piece * sc.piece_bytes();
      }
    if (n < sc.k) p_.pages_lost(o.page, o.loc);
    if (have[sc.k - 1] == sc.k - 1) std::memcpy(o.local, o.scratch.data(), kPage);  // the data pieces: no decode
    else if (!codec_.decode(have, pieces, o.local)) p_.pages_lost(o.page, o.loc);
    else if (o.spare) p_.spare_wins.fetch_add(1, std::memory_order_relaxed);
  }
  if (page_checksum(o.local) == o.sum) return finish(op);
  if (o.outstanding != 0) {
    o.spare = false;  // check again with every piece in, before reading others
    return;
  }
  // Not the page we wrote: a torn or stale piece. Read it again from other pieces.
  p_.checksum_retries.fetch_add(1, std::memory_order_relaxed);
  if (++o.attempts > sc.pieces())
    farmem::detail::fatal("far page %llu read back from the pool does not match what was written, from any %u of its "
                  "pieces; a memory server returned wrong data",
                  static_cast<unsigned long long>(o.page), sc.k);
  o.got = 0;
  if (sc.k != 1) {
    // Decode without one piece at a time: one bad piece among K+M is found.
    o.tried = 1u << ((o.attempts - 1) % sc.pieces());
    o.direct = 0;
  }
  plan_read(op);
}

void PoolQueuePair::on_piece(unsigned op, unsigned piece, unsigned server, bool failed) {
  Op& o = ops_[op];
  --o.outstanding;
  --inflight_[server];
  if (o.done) {  // the spare of a read already handed out
    if (failed) p_.server_failed(server, qp_gen_[server]);
    if (o.outstanding == 0) release(op);
    return;
  }
  if (failed) {
    p_.server_failed(server, qp_gen_[server]);
    if (o.write) {
      if (!place_piece(op, piece) && o.outstanding == 0 && o.got == 0) p_.pages_lost(o.page, 0);
    } else {
      plan_read(op);
    }
  } else {
    o.got |= 1u << piece;
    if (o.write) {
      o.loc = with_piece(o.loc, piece, server + 1);
      p_.member(server).written_bytes.fetch_add(p_.scheme.piece_bytes(), std::memory_order_relaxed);
    }
    else if (o.into_scratch && (o.direct & (1u << piece)) && p_.scheme.k > 1)  // sent before the switch to a decode
      std::memcpy(o.scratch.data() + piece * p_.scheme.piece_bytes(), o.local + piece * p_.scheme.piece_bytes(),
                  p_.scheme.piece_bytes());
  }
  if (!o.write) {
    const unsigned got = static_cast<unsigned>(__builtin_popcount(o.got));
    if (got >= p_.scheme.k && (o.outstanding == 0 || o.spare)) return read_done(op);
    if (o.outstanding == 0) plan_read(op);
    return;
  }
  if (o.outstanding != 0) return;
  if (__builtin_popcount(o.got) < p_.scheme.k) p_.pages_lost(o.page, o.loc);
  if (__builtin_popcount(o.got) < p_.scheme.pieces()) p_.degraded_writes.fetch_add(1, std::memory_order_relaxed);
  p_.sums[o.page].store(o.sum, std::memory_order_relaxed);
  p_.note_written(o.page);
  p_.pieces_moved(o.before, o.loc);
  p_.loc[o.page].store(o.loc, std::memory_order_release);  // also gives up ownership
  finish(op);
}

// The pool marked server s down: whatever this queue pair has in flight there
// fails now (its connection may be open but silent, as with a stopped server).
void PoolQueuePair::abandon(unsigned s) {
  qps_[s].reset();  // closes the connection: a late reply cannot land in a reused op
  dirty_ &= ~(1u << s);
  std::vector<std::pair<unsigned, unsigned>> lost;
  for (unsigned op = 0; op < ops_.size(); ++op) {
    if (!ops_[op].used) continue;
    for (unsigned piece = 0; piece < 16; ++piece)
      if (sent_piece_server_[op * 16 + piece] == s + 1) {
        sent_piece_server_[op * 16 + piece] = 0;
        lost.emplace_back(op, piece);
      }
  }
  for (auto [op, piece] : lost) on_piece(op, piece, s, true);
}

std::size_t PoolQueuePair::poll(net::Completion* out, std::size_t max) {
  if (ready_.empty() && active_ != 0) {
    auto reap = [&](unsigned s, net::QueuePair& q) {
      net::Completion got[64];
      for (std::size_t n; (n = q.poll(got, 64)) != 0;)
        for (std::size_t k = 0; k < n; ++k) {
          const unsigned op = static_cast<unsigned>(got[k].cookie / 16), piece = static_cast<unsigned>(got[k].cookie % 16);
          if (sent_piece_server_[op * 16 + piece] != s + 1) continue;  // abandoned already
          sent_piece_server_[op * 16 + piece] = 0;
          on_piece(op, piece, s, got[k].failed);
        }
    };
    for (unsigned s = 0, slots = p_.slots(); s < slots; ++s) {
      if (!qps_[s] || inflight_[s] == 0) continue;
      const Pool::Member& m = p_.member(s);
      if (m.state.load(std::memory_order_acquire) == State::Down || m.gen.load(std::memory_order_acquire) != qp_gen_[s]) {
        abandon(s);  // lost (marked by another queue pair, or it went silent)
        continue;
      }
      reap(s, *qps_[s]);
    }
    for (auto& [s, q] : orphans_) reap(s, *q);
    submit();  // pieces re-sent elsewhere
  }
  return net::take_completions(ready_, out, max);
}


}  // namespace farmem::tier::impl
