// no_io_uring ERRNO PROGRAM [ARGS...]: runs PROGRAM with io_uring_setup failing
// with ERRNO (a seccomp filter), as where kernel.io_uring_disabled is set or a
// container's seccomp profile blocks io_uring; the file:// tests use it.
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: no_io_uring ERRNO PROGRAM [ARGS...]\n");
    return 2;
  }
  const unsigned err = (unsigned)atoi(argv[1]);
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (err & SECCOMP_RET_DATA)),
      BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
  };
  struct sock_fprog prog = {sizeof code / sizeof code[0], code};
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
    perror("no_io_uring: seccomp");
    return 2;
  }
  execvp(argv[2], argv + 2);
  perror("no_io_uring: exec");
  return 2;
}
