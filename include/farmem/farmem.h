/* farmem C API: ordinary pointers into transparent far memory.
 *
 *   void* p = farmem_malloc(1 << 30);   // 1 GiB: only FARMEM_LOCAL_MEM of it stays local
 *   memset(p, 1, 1 << 30);              // plain loads and stores; missing pages fault in
 *   farmem_free(p);
 *
 * Allocations are page granular and zeroed. The runtime starts from the
 * environment (docs/configuration.md) on first use. When far memory cannot be
 * set up (no userfaultfd permission, an old kernel, a bad FARMEM_* value) the
 * first call prints one line "farmem: ..." naming the fix and returns NULL
 * with errno set. */
#ifndef FARMEM_FARMEM_H
#define FARMEM_FARMEM_H
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

void* farmem_malloc(size_t size);
void* farmem_calloc(size_t count, size_t size);
void farmem_free(void* ptr);
/* Bytes usable at ptr (a whole number of pages), 0 if ptr is not ours. */
size_t farmem_usable_size(void* ptr);
/* Non-zero if ptr points into the transparent far-memory region. */
int farmem_owns(const void* ptr);
/* The statistics line (as FARMEM_STATS=1 prints it) into buf; returns its length. */
size_t farmem_stats_json(char* buf, size_t len);

#ifdef __cplusplus
}
#endif
#endif
