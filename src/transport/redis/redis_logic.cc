// The redis:// transport's pure logic (see redis_logic.hpp).
#include "transport/redis/redis_logic.hpp"

#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include "farmem/runtime.hpp"

namespace farmem::net::redis {
namespace {

int hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A password may carry %XX escapes (an '@' or ':' in it must be written so).
std::string unescape(const std::string& s, const std::string& uri) {
  std::string out;
  for (std::size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size() || hex(s[i + 1]) < 0 || hex(s[i + 2]) < 0)
      throw Error("FARMEM_BACKEND=" + uri + ": a bad %-escape in the user or password");
    out += static_cast<char>(hex(s[i + 1]) * 16 + hex(s[i + 2]));
    i += 2;
  }
  return out;
}

Node parse_node(const std::string& text, const std::string& shown, const std::string& form) {
  Node n;
  std::string host = text, port;
  if (!host.empty() && host.front() == '[') {  // [IPv6]:PORT
    std::size_t close = host.find(']');
    if (close == std::string::npos) throw Error("FARMEM_BACKEND=" + shown + " is not " + form);
    if (close + 1 < host.size()) {
      if (host[close + 1] != ':') throw Error("FARMEM_BACKEND=" + shown + " is not " + form);
      port = host.substr(close + 2);
    }
    host = host.substr(1, close - 1);
  } else if (std::size_t colon = host.rfind(':'); colon != std::string::npos) {
    port = host.substr(colon + 1);
    host.resize(colon);
  }
  if (host.empty()) throw Error("FARMEM_BACKEND=" + shown + " names no host; write " + form);
  n.host = host;
  if (!port.empty()) {
    char* end = nullptr;
    long p = std::strtol(port.c_str(), &end, 10);
    if (*end || p < 1 || p > 65535) throw Error("FARMEM_BACKEND=" + shown + ": port must be 1-65535");
    n.port = static_cast<int>(p);
  }
  return n;
}

}  // namespace

Uri parse_uri(const std::string& uri) {
  Uri u;
  std::string rest;
  const std::string plain = "redis://", cluster = "redis+cluster://";
  std::string form = "redis://[user:password@]HOST:PORT[/DB]";
  if (uri.rfind(plain, 0) == 0) {
    rest = uri.substr(plain.size());
  } else if (uri.rfind(cluster, 0) == 0) {
    u.cluster = true;
    rest = uri.substr(cluster.size());
    form = "redis+cluster://[user:password@]HOST:PORT,HOST:PORT,...";
  } else {
    throw Error("FARMEM_BACKEND=" + uri + " is not a Redis URI; write redis://HOST:PORT");
  }
  std::string scheme = uri.substr(0, uri.size() - rest.size());
  std::string auth;
  if (std::size_t at = rest.rfind('@'); at != std::string::npos) {
    auth = rest.substr(0, at);
    rest = rest.substr(at + 1);
  }
  u.shown = scheme + (auth.empty() ? "" : "***@") + rest;
  if (!auth.empty()) {
    std::size_t colon = auth.find(':');
    if (colon == std::string::npos) {
      u.password = unescape(auth, u.shown);  // redis://PASSWORD@HOST, as redis-cli reads it
    } else {
      u.user = unescape(auth.substr(0, colon), u.shown);
      u.password = unescape(auth.substr(colon + 1), u.shown);
    }
    if (u.password.empty()) throw Error("FARMEM_BACKEND=" + u.shown + " has an empty password; write " + form);
  }
  if (std::size_t slash = rest.find('/'); slash != std::string::npos) {
    std::string db = rest.substr(slash + 1);
    rest.resize(slash);
    if (!db.empty()) {
      if (u.cluster) throw Error("FARMEM_BACKEND=" + u.shown + ": a Redis Cluster has only database 0");
      char* end = nullptr;
      long d = std::strtol(db.c_str(), &end, 10);
      if (*end || d < 0 || d > 1000000) throw Error("FARMEM_BACKEND=" + u.shown + ": database must be a number");
      u.db = static_cast<int>(d);
    }
  }
  if (rest.empty()) throw Error("FARMEM_BACKEND=" + u.shown + " names no host; write " + form);
  std::size_t start = 0;
  for (;;) {
    std::size_t comma = rest.find(',', start);
    std::string one = rest.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    u.nodes.push_back(parse_node(one, u.shown, form));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  if (!u.cluster && u.nodes.size() > 1)
    throw Error("FARMEM_BACKEND=" + u.shown + " names several servers; a Redis Cluster is redis+cluster://...");
  return u;
}

void read_auth_file(const std::string& path, std::string& user, std::string& password) {
  std::ifstream in(path);
  std::string line;
  if (!in || !std::getline(in, line))
    throw Error("FARMEM_REDIS_AUTH_FILE=" + path + " cannot be read; write 'password' or 'user password' in it");
  std::istringstream words(line);
  std::string a, b, c;
  words >> a >> b >> c;
  if (a.empty() || !c.empty())
    throw Error("FARMEM_REDIS_AUTH_FILE=" + path + " must hold 'password' or 'user password' on its first line");
  if (b.empty()) {
    user.clear();
    password = a;
  } else {
    user = a;
    password = b;
  }
}

std::string key_prefix(const std::string& host, long pid, std::uint64_t start_time) {
  return "farmem:{" + host + "-" + std::to_string(pid) + "-" + std::to_string(start_time) + "-";
}

std::string page_key(const std::string& prefix, std::uint64_t page) {
  return prefix + std::to_string(page / kPagesPerStripe) + "}:" + std::to_string(page);
}

std::uint16_t crc16(std::string_view bytes, std::uint16_t crc) {
  for (unsigned char byte : bytes) {
    crc ^= static_cast<std::uint16_t>(byte << 8);
    for (int bit = 0; bit < 8; ++bit)
      crc = (crc & 0x8000) ? static_cast<std::uint16_t>((crc << 1) ^ 0x1021) : static_cast<std::uint16_t>(crc << 1);
  }
  return crc;
}

unsigned key_slot(std::string_view key) {
  // The spec: hash only what is between the first '{' and the next '}', if that is not empty.
  std::size_t open = key.find('{');
  if (open != std::string_view::npos) {
    std::size_t close = key.find('}', open + 1);
    if (close != std::string_view::npos && close > open + 1) key = key.substr(open + 1, close - open - 1);
  }
  return crc16(key) & 16383;
}

bool parse_redirect(std::string_view error, const std::string& host, Redirect& out) {
  Redirect r;
  if (error.rfind("MOVED ", 0) == 0) {
    error.remove_prefix(6);
  } else if (error.rfind("ASK ", 0) == 0) {
    r.ask = true;
    error.remove_prefix(4);
  } else {
    return false;
  }
  std::size_t space = error.find(' ');
  if (space == 0 || space == std::string_view::npos || space > 5) return false;
  unsigned slot = 0;
  for (char c : error.substr(0, space)) {
    if (c < '0' || c > '9') return false;
    slot = slot * 10 + static_cast<unsigned>(c - '0');
  }
  if (slot >= kSlots) return false;
  r.slot = slot;
  std::string_view addr = error.substr(space + 1);
  std::size_t colon = addr.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == addr.size() || addr.size() - colon > 6) return false;
  int port = 0;
  for (char c : addr.substr(colon + 1)) {
    if (c < '0' || c > '9') return false;
    port = port * 10 + (c - '0');
  }
  if (port < 1 || port > 65535) return false;
  std::string_view h = addr.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') h = h.substr(1, h.size() - 2);  // [IPv6]
  r.node.host = h.empty() ? host : std::string(h);
  r.node.port = port;
  out = r;
  return true;
}

namespace {

// A cursor over a RESP reply; every read says false when the bytes run out.
struct RespCursor {
  const char* p;
  const char* end;
  bool short_of_bytes = false;
  bool bad = false;

  // The line after a type byte, as a number.
  bool number(long long& v) {
    bool neg = false;
    v = 0;
    if (p < end && *p == '-') neg = true, ++p;
    const char* start = p;
    while (p < end && *p >= '0' && *p <= '9') v = v * 10 + (*p++ - '0');
    if (p + 1 >= end) return short_of_bytes = true, false;
    if (p == start || p[0] != '\r' || p[1] != '\n') return bad = true, false;
    p += 2;
    if (neg) v = -v;
    return true;
  }
  bool type(char want) {
    if (p >= end) return short_of_bytes = true, false;
    if (*p != want) return bad = true, false;
    ++p;
    return true;
  }
  bool integer(long long& v) { return type(':') && number(v); }
  // A bulk string, copied into out (cut to cap - 1 bytes, NUL-terminated).
  bool bulk(char* out, std::size_t cap) {
    long long n;
    if (!type('$') || !number(n)) return false;
    if (n < 0) return bad = true, false;
    if (end - p < n + 2) return short_of_bytes = true, false;
    std::size_t k = std::min<std::size_t>(static_cast<std::size_t>(n), cap - 1);
    std::memcpy(out, p, k);
    out[k] = 0;
    p += n + 2;
    return true;
  }
  // Any one element, skipped.
  bool skip() {
    if (p >= end) return short_of_bytes = true, false;
    const char t = *p++;
    long long n;
    switch (t) {
      case '+':
      case '-':
      case ':': {
        while (p + 1 < end && !(p[0] == '\r' && p[1] == '\n')) ++p;
        if (p + 1 >= end) return short_of_bytes = true, false;
        p += 2;
        return true;
      }
      case '$':
        if (!number(n)) return false;
        if (n < 0) return true;
        if (end - p < n + 2) return short_of_bytes = true, false;
        p += n + 2;
        return true;
      case '*':
      case '%':  // RESP3 map: twice as many elements
        if (!number(n)) return false;
        if (t == '%') n *= 2;
        for (long long i = 0; i < n; ++i)
          if (!skip()) return false;
        return true;
      default:
        return bad = true, false;
    }
  }
};

}  // namespace

long parse_cluster_slots(const char* buf, std::size_t len, SlotOwner* nodes, unsigned max, unsigned* count,
                         std::uint16_t* owner) {
  RespCursor c{buf, buf + len};
  auto fail = [&]() -> long { return c.short_of_bytes && !c.bad ? 0 : -1; };
  long long ranges;
  *count = 0;
  if (!c.type('*') || !c.number(ranges)) return fail();
  for (long long r = 0; r < ranges; ++r) {
    long long elements, first, last, fields, port;
    SlotOwner m{};
    if (!c.type('*') || !c.number(elements) || elements < 3 || !c.integer(first) || !c.integer(last)) return fail();
    if (first < 0 || last < first || last >= kSlots) return -1;
    // The master: [host, port, id, ...]; the replicas after it are skipped.
    if (!c.type('*') || !c.number(fields) || fields < 2 || !c.bulk(m.host, sizeof m.host) || !c.integer(port)) return fail();
    if (port < 1 || port > 65535) return -1;
    m.port = static_cast<int>(port);
    for (long long f = 2; f < fields; ++f)
      if (!c.skip()) return fail();
    for (long long e = 3; e < elements; ++e)
      if (!c.skip()) return fail();
    unsigned i = 0;
    while (i < *count && !(nodes[i].port == m.port && std::strcmp(nodes[i].host, m.host) == 0)) ++i;
    if (i == *count) {
      if (*count == max) return -1;
      nodes[(*count)++] = m;
    }
    for (long long s = first; s <= last; ++s) owner[s] = static_cast<std::uint16_t>(i);
  }
  return c.p - buf;
}

unsigned stripe_slot(std::string_view prefix, std::uint64_t stripe) {
  // The tag is what follows the prefix's '{', then the stripe's decimal digits.
  std::size_t open = prefix.find('{');
  std::uint16_t crc = crc16(open == std::string_view::npos ? prefix : prefix.substr(open + 1));
  char digits[24];
  std::size_t n = 0;
  do digits[sizeof digits - ++n] = static_cast<char>('0' + stripe % 10), stripe /= 10;
  while (stripe);
  return crc16(std::string_view(digits + sizeof digits - n, n), crc) & (kSlots - 1);
}

bool retry_later(std::string_view error) {
  return error.rfind("TRYAGAIN", 0) == 0 || error.rfind("CLUSTERDOWN", 0) == 0 || error.rfind("LOADING", 0) == 0;
}

std::vector<Part> split(std::uint64_t off, std::uint64_t len) {
  std::vector<Part> parts;
  if (len == 0 || off % kUnit || len % kUnit) return parts;
  std::size_t at = 0;
  while (len) {
    std::uint64_t in = off % kPageSize;
    std::uint64_t n = std::min(len, kPageSize - in);
    parts.push_back({off / kPageSize, static_cast<std::uint32_t>(in), static_cast<std::uint32_t>(n), at});
    off += n, len -= n, at += n;
  }
  return parts;
}

}  // namespace farmem::net::redis
