// The control path: removing our keys (see control.hpp).
#include "transport/redis/control.hpp"

#include <ctime>
#include <string>

#include "farmem/runtime.hpp"
#include "runtime/fatal.hpp"
#include "runtime/os.hpp"
#include "transport/redis/connection.hpp"

namespace farmem::net::redis {
namespace {

struct Lost {};  // a pool member's Redis broke: unlink() gives up

void pause_ms(long ms) {
  timespec t{0, ms * 1000 * 1000};
  nanosleep(&t, nullptr);
}

}  // namespace

void Control::close() {
  for (redisContext*& c : c_)
    if (c) redisFree(c), c = nullptr;
}

void Control::drop(unsigned node) {
  if (node < c_.size() && c_[node]) redisFree(c_[node]), c_[node] = nullptr;
}

redisContext* Control::connection(unsigned node) {
  if (c_.size() <= node) c_.resize(node + 1, nullptr);
  if (c_[node]) return c_[node];
  try {
    c_[node] = s_.open(node);
  } catch (const Error& e) {
    c_[node] = reconnect(node, std::string("control connection: ") + e.what());
  }
  return c_[node];
}

redisContext* Control::reconnect(unsigned node, const std::string& why) {
  drop(node);
  if (s_.survive || !patient_) throw Lost{};
  return c_[node] = s_.recover(node, why);
}

bool Control::unlink(const std::vector<std::uint64_t>& pages) {
  try {
    std::vector<std::uint64_t> todo = pages, again;
    for (int round = 0; !todo.empty(); ++round) {
      if (round == 10) s_.gone("the control connection broke again and again");
      again.clear();
      unlink_once(todo, again);
      todo.swap(again);
    }
    return true;
  } catch (const Lost&) {
    close();
    return false;
  }
}

bool Control::unlink_once(const std::vector<std::uint64_t>& pages, std::vector<std::uint64_t>& again) {
  // Batches of one node; in a cluster, of one stripe too (a multi-key command must stay in one slot).
  std::vector<Batch> batches;
  for (std::size_t i = 0; i < pages.size();) {
    const unsigned node = s_.owner_of(pages[i]);
    const std::uint64_t stripe = pages[i] / kPagesPerStripe;
    std::size_t j = i + 1;
    while (j < pages.size() && j - i < kUnlinkBatch && (!s_.uri.cluster || pages[j] / kPagesPerStripe == stripe) &&
           s_.owner_of(pages[j]) == node)
      ++j;
    batches.push_back({node, i, j - i});
    i = j;
  }
  auto retry_node = [&](unsigned node) {  // every page of node's batches again (UNLINK twice does no harm)
    for (const Batch& b : batches)
      if (b.node == node) again.insert(again.end(), pages.begin() + b.first, pages.begin() + b.first + b.count);
  };
  // Every node's commands first, then every node's replies: the nodes work at once.
  std::vector<std::size_t> sent(batches.size(), 0);
  std::vector<std::uint64_t> one_by_one;  // pages of batches a node redirected or asked to retry
  std::vector<bool> broken;
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const unsigned node = batches[b].node;
    if (broken.size() <= node) broken.resize(node + 1, false);
    if (broken[node]) continue;
    redisContext* c = connection(node);
    if (!c) {  // a failover moved its slots: the next round routes them anew
      broken[node] = true;
      retry_node(node);
      continue;
    }
    std::vector<std::string> keys{"UNLINK"};
    for (std::size_t i = 0; i < batches[b].count; ++i) keys.push_back(page_key(s_.prefix, pages[batches[b].first + i]));
    std::vector<const char*> argv;
    std::vector<std::size_t> lens;
    for (auto& k : keys) argv.push_back(k.data()), lens.push_back(k.size());
    if (redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK)
      detail::fatal("redis: out of memory");
    sent[b] = 1;
  }
  for (std::size_t b = 0; b < batches.size(); ++b) {
    const unsigned node = batches[b].node;
    if (!sent[b] || broken[node]) continue;
    void* raw = nullptr;
    int rc;
    {
      NoSigpipe quiet;
      rc = redisGetReply(c_[node], &raw);
    }
    if (rc != REDIS_OK) {
      broken[node] = true;
      retry_node(node);
      reconnect(node, std::string("control connection: ") + c_[node]->errstr);
      continue;
    }
    Reply r(raw);
    if (r.r->type != REDIS_REPLY_ERROR) continue;
    const std::string msg = text(r.r);
    Redirect rd;
    if (parse_redirect(msg, "", rd) || retry_later(msg)) {
      if (!s_.uri.cluster && !retry_later(msg)) s_.not_standalone(msg);
      one_by_one.insert(one_by_one.end(), pages.begin() + batches[b].first,
                        pages.begin() + batches[b].first + batches[b].count);
    } else if (!s_.survive) {
      s_.refused(msg);
    }
  }
  // Only now, with every pipelined reply read: unlink_one's commands share the connections.
  for (std::uint64_t page : one_by_one) unlink_one(page);
  return again.empty();
}

void Control::unlink_one(std::uint64_t page) {
  const std::string key = page_key(s_.prefix, page);
  const std::uint64_t deadline = detail::now_ns() + s_.silence_ns;
  int forced = -1;  // an ASK's node, this once
  for (;;) {
    if (detail::now_ns() > deadline) s_.gone("UNLINK of a page's key was redirected or refused until the silence limit");
    const unsigned node = forced >= 0 ? static_cast<unsigned>(forced) : s_.owner_of(page);
    redisContext* c = connection(node);
    if (!c) {
      forced = -1;
      continue;
    }
    const Node n = s_.node(node);
    try {
      if (forced >= 0) command(c, shown(n), {"ASKING"});
      Reply r = command(c, shown(n), {"UNLINK", key});
      if (r.r->type != REDIS_REPLY_ERROR) return;
      const std::string msg = text(r.r);
      Redirect rd;
      if (parse_redirect(msg, n.host, rd)) {
        if (!s_.uri.cluster) s_.not_standalone(msg);
        const unsigned to = s_.learn(rd.node);
        if (rd.ask) {
          forced = static_cast<int>(to);
        } else {
          s_.moved(rd.slot, to);
          forced = -1;
        }
        continue;
      }
      if (retry_later(msg)) {
        pause_ms(50);
        continue;
      }
      if (!s_.survive) s_.refused(msg);
      return;
    } catch (const Error& e) {
      reconnect(node, std::string("control connection: ") + e.what());
      forced = -1;
    }
  }
}

bool Control::unlink_all() {
  std::vector<std::uint64_t> pages;
  auto unlink_or_keep = [&] {
    if (unlink(pages)) return true;
    for (std::uint64_t p : pages) s_.mark(p);
    return false;
  };
  for (std::uint64_t w = 0; w < (s_.npages + 63) / 64; ++w) {
    std::uint64_t bits = s_.written[w].load(std::memory_order_relaxed);
    for (; bits; bits &= bits - 1) {
      std::uint64_t p = w * 64 + static_cast<unsigned>(__builtin_ctzll(bits));
      if (s_.unmark(p)) pages.push_back(p);
    }
    if (pages.size() >= 64 * kUnlinkBatch) {
      if (!unlink_or_keep()) return false;
      pages.clear();
    }
  }
  return unlink_or_keep();
}

void Shared::remove_all_keys() {
  static std::atomic<bool> once{false};
  if (once.exchange(true)) return;
  Control c(*this, false);  // connections of its own: the queue pairs' have commands in flight
  c.unlink_all();
}

}  // namespace farmem::net::redis
