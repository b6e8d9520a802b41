/* A plain C program for test/cli/stat_test.sh, run under farmem-run: fills
 * MIB MiB of heap and reads it back, prints "ready", waits for a line on
 * stdin, and exits at once (nothing at exit touches the heap, so the exit
 * statistics are what farmem-stat read while it waited). Usage: hold MIB */
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char** argv) {
  size_t bytes = (size_t)atoi(argc > 1 ? argv[1] : "48") << 20;
  unsigned char* p = malloc(bytes);
  if (p == NULL) return 1;
  for (size_t i = 0; i < bytes; i += 512) p[i] = (unsigned char)i;
  unsigned long sum = 0;
  for (size_t i = 0; i < bytes; i += 4096) sum += p[i];
  printf("ready %lu\n", sum);
  fflush(stdout);
  getchar();
  return 0;
}
