// Orderings the kernel gives that ThreadSanitizer cannot see. The evictor
// writes transparent pages back straight from the region (process_vm_writev,
// writev), which TSan's interceptors count as reads racing the application's
// writes; write-protection (UFFDIO_WRITEPROTECT) is what orders them.
#pragma once

#if defined(__SANITIZE_THREAD__)
extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);
namespace farmem::detail {
struct KernelOrderedReads {
  KernelOrderedReads() { AnnotateIgnoreReadsBegin(__FILE__, __LINE__); }
  ~KernelOrderedReads() { AnnotateIgnoreReadsEnd(__FILE__, __LINE__); }
};
}  // namespace farmem::detail
#else
namespace farmem::detail {
struct KernelOrderedReads {};
}  // namespace farmem::detail
#endif
