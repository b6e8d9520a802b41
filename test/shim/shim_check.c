/* An unmodified-style C program for the preload shim (test/cli/shim_test.sh runs
 * it under farmem-run with a small budget). It uses the heap the way real
 * programs do and checks every byte: threads allocating and freeing, realloc
 * growing and shrinking blocks, large anonymous mmaps with partial munmap,
 * mremap and madvise(MADV_DONTNEED), and fork with a child that reads and
 * writes its copy while the parent keeps its own. Prints "shim_check: ok". */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAIL(...) do { fprintf(stderr, "shim_check: FAIL: " __VA_ARGS__); fprintf(stderr, "\n"); exit(1); } while (0)

#include "pattern.h"

/* Each thread keeps a set of live blocks of random sizes, reallocs and frees. */
#define SLOTS 512
static void* worker(void* arg) {
  uint64_t id = (uint64_t)(uintptr_t)arg, r = id * 7919 + 1;
  void* blk[SLOTS] = {0};
  size_t len[SLOTS] = {0};
  uint64_t seed[SLOTS] = {0};
  for (int it = 0; it < 20000; ++it) {
    r = mix(r);
    int s = (int)(r % SLOTS);
    size_t n = 8 * (1 + (r >> 20) % ((r >> 40) % 8 == 0 ? 16384 : 64));
    if (blk[s]) check(blk[s], len[s], seed[s], "thread block");
    if (blk[s] && (r & 3) == 0) {
      free(blk[s]);
      blk[s] = NULL;
    } else if (blk[s] && (r & 3) == 1) {  /* realloc keeps the common prefix */
      void* q = realloc(blk[s], n);
      if (!q) FAIL("realloc %zu", n);
      check(q, n < len[s] ? n : len[s], seed[s], "realloc prefix");
      blk[s] = q;
      len[s] = n;
      seed[s] = r;
      fill(q, n, r);
    } else {
      if (blk[s]) free(blk[s]);
      blk[s] = (r & 4) ? malloc(n) : calloc(1, n);
      if (!blk[s]) FAIL("malloc %zu", n);
      if (!(r & 4)) for (size_t i = 0; i < n; ++i) if (((char*)blk[s])[i]) FAIL("calloc not zero");
      len[s] = n;
      seed[s] = r;
      fill(blk[s], n, r);
    }
  }
  for (int s = 0; s < SLOTS; ++s) if (blk[s]) { check(blk[s], len[s], seed[s], "final"); free(blk[s]); }
  return NULL;
}

int main(int argc, char** argv) {
  size_t mb = argc > 1 ? (size_t)atol(argv[1]) : 256;  /* total size of the big buffers */
  /* 1. A big malloc'd array, written, then read back after everything else ran. */
  size_t big_n = mb << 19;  /* half of it */
  char* big = malloc(big_n);
  if (!big) FAIL("malloc %zu", big_n);
  fill(big, big_n, 1);

  /* 2. Threads hammering the allocator. */
  pthread_t t[4];
  for (int i = 0; i < 4; ++i) pthread_create(&t[i], NULL, worker, (void*)(uintptr_t)(i + 1));
  for (int i = 0; i < 4; ++i) pthread_join(t[i], NULL);

  /* 3. A large anonymous mapping: partial munmap, madvise, mremap. */
  size_t map_n = mb << 18;  /* a quarter */
  char* m = mmap(NULL, map_n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) FAIL("mmap");
  for (size_t i = 0; i < map_n; i += 4096) if (m[i]) FAIL("fresh mmap not zero");
  fill(m, map_n, 2);
  if (munmap(m + map_n - (1 << 20), 1 << 20) != 0) FAIL("munmap tail");
  map_n -= 1 << 20;
  if (madvise(m, 1 << 20, MADV_DONTNEED) != 0) FAIL("madvise");
  for (size_t i = 0; i < (1 << 20); ++i) if (m[i]) FAIL("MADV_DONTNEED page not zero at %zu", i);
  check(m + (1 << 20), map_n - (1 << 20), 2 + (1 << 17), "mmap after madvise");
  char* m2 = mremap(m, map_n, map_n * 2, MREMAP_MAYMOVE);
  if (m2 == MAP_FAILED) FAIL("mremap grow");
  check(m2 + (1 << 20), map_n - (1 << 20), 2 + (1 << 17), "mremap grow");
  for (size_t i = map_n; i < 2 * map_n; i += 4096) if (m2[i]) FAIL("grown part not zero");
  char* m3 = mremap(m2, 2 * map_n, map_n / 2, 0);
  if (m3 != m2) FAIL("mremap shrink moved");
  check(m3 + (1 << 20), map_n / 2 - (1 << 20), 2 + (1 << 17), "mremap shrink");

  /* 4. fork: the child sees the parent's memory as it was, and its writes stay its own. */
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) FAIL("fork");
  if (pid == 0) {
    check(big, big_n, 1, "child reads parent's array");
    fill(big, big_n, 3);
    check(big, big_n, 3, "child's own writes");
    char* c = malloc(32 << 20);
    fill(c, 32 << 20, 4);
    check(c, 32 << 20, 4, "child malloc");
    free(c);
    _exit(0);
  }
  fill(big + big_n / 2, big_n / 2, 5 + big_n / 16);  /* the parent writes meanwhile */
  int st = 0;
  if (waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) FAIL("child failed (status %d)", st);
  check(big, big_n / 2, 1, "parent's array after fork");
  check(big + big_n / 2, big_n / 2, 5 + big_n / 16, "parent's writes after fork");

  /* 5. fork + exec, as system() does. */
  if (system("exit 7") != 7 << 8) FAIL("system()");

  munmap(m3, map_n / 2);
  free(big);
  printf("shim_check: ok\n");
  return 0;
}
