/* System calls whose kernel side reads or writes far memory (test/cli/run_test.sh
 * runs it under farmem-run with a small budget, as root and as an unprivileged
 * user): read/write on a file, pread/pwrite, send/recv over a socket pair, with
 * every buffer in far memory and evicted between the calls. Checks every byte
 * and prints "syscall_check: ok". */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FAIL(...) do { fprintf(stderr, "syscall_check: FAIL: " __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)
#define MiB (1024 * 1024)

#include "pattern.h"
/* Touches n bytes elsewhere so the buffers' pages go far. */
static void push_out(size_t n) {
  char* junk = malloc(n);
  if (!junk) FAIL("malloc");
  memset(junk, 1, n);
  free(junk);
}
static void all(ssize_t (*io)(int, void*, size_t), int fd, char* p, size_t n, const char* what) {
  while (n) {
    ssize_t k = io(fd, p, n);
    if (k <= 0) FAIL("%s: %s", what, k < 0 ? strerror(errno) : "end of file");
    p += k;
    n -= (size_t)k;
  }
}
static ssize_t rd(int fd, void* p, size_t n) { return read(fd, p, n); }
static ssize_t wr(int fd, void* p, size_t n) { return write(fd, p, n); }

int main(int argc, char** argv) {
  const size_t n = (size_t)(argc > 2 ? atoi(argv[2]) : 48) * MiB;
  const char* path = argc > 1 ? argv[1] : "syscall_check.tmp";
  char* out = malloc(n);
  char* in = malloc(n);
  if (!out || !in) FAIL("malloc of %zu bytes", n);
  fill(out, n, 1);
  push_out(2 * n);

  /* write(2) reads far memory; read(2) writes into it. */
  int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) FAIL("open %s: %s", path, strerror(errno));
  all(wr, fd, out, n, "write");
  push_out(2 * n);
  if (lseek(fd, 0, SEEK_SET) != 0) FAIL("lseek");
  all(rd, fd, in, n, "read");
  check(in, n, 1, "read back");

  /* pread into the middle of a buffer that went far again. */
  memset(in, 0, n);
  push_out(2 * n);
  if (pread(fd, in + n / 2, n / 2, 0) != (ssize_t)(n / 2)) FAIL("pread: %s", strerror(errno));
  check(in + n / 2, n / 2, 1, "pread");
  close(fd);
  unlink(path);

  /* send(2) from far memory, recv(2) into far memory, through a socket pair. */
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) FAIL("socketpair");
  fill(out, n, 2);
  push_out(2 * n);
  size_t sent = 0, got = 0;
  while (got < n) {
    if (sent < n) {
      ssize_t k = send(sv[0], out + sent, n - sent > 65536 ? 65536 : n - sent, MSG_DONTWAIT);
      if (k > 0) sent += (size_t)k;
      else if (k < 0 && errno != EAGAIN) FAIL("send: %s", strerror(errno));
    }
    ssize_t k = recv(sv[1], in + got, n - got, MSG_DONTWAIT);
    if (k > 0) got += (size_t)k;
    else if (k < 0 && errno != EAGAIN) FAIL("recv: %s", strerror(errno));
  }
  check(in, n, 2, "recv");
  printf("syscall_check: ok\n");
  return 0;
}
