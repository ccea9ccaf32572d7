# SigbusGuard.x86_64.S: the SIGBUS handler of SigbusGuard.cs, which holds it as machine code
# (SigbusGuard.X64.cs). Kept here as its source; tests/Vmm.Core.Tests/Posix/SigbusGuardTests.cs
# assembles this file with GNU as and checks the bytes are the same.
#
# void handler(int signo /* rdi */, siginfo_t *info /* rsi */, void *ucontext /* rdx */)
#
# The table (allocated by SigbusGuard, never freed; 0x1122334455667788 is replaced by its
# address when the code is installed):
#   +0   previous SA_SIGINFO handler (the .NET runtime's), chained to for any other SIGBUS
#   +8   eventfd written once per repaired fault (int)
#   +16  number of slots to scan
#   +24  the constant 1, the value written to the eventfd
#   +32  slots, 32 bytes each: start, end (exclusive; 0 = free), granule, faults
#
# A fault is repaired when it is BUS_ADRERR (si_code 2: a page of the file is gone, mmap(2))
# inside a slot: the granule holding it is replaced by anonymous zero pages (MAP_FIXED), the
# slot's fault count goes up, the eventfd is written, and the faulting instruction runs again.
# Only system calls are made (mmap, write): async-signal-safe, no libc, no managed code.
    .text
    .globl sigbus_guard_handler
sigbus_guard_handler:
    movabs $0x1122334455667788, %rax     # the table
    cmpl   $2, 8(%rsi)                   # si_code == BUS_ADRERR?
    jne    .Lchain
    mov    16(%rsi), %r8                 # si_addr: the faulting address
    mov    16(%rax), %rcx                # slots to scan
    lea    32(%rax), %r9                 # first slot
.Lscan:
    test   %rcx, %rcx
    jz     .Lchain
    cmp    8(%r9), %r8                   # address < end?
    jae    .Lnext
    cmp    (%r9), %r8                    # address >= start?
    jae    .Lfound
.Lnext:
    add    $32, %r9
    dec    %rcx
    jmp    .Lscan
.Lfound:
    push   %rdi                          # kept for chaining if mmap fails
    push   %rsi
    push   %rdx
    push   %r9
    mov    16(%r9), %rsi                 # length: the granule
    mov    %rsi, %rdi
    neg    %rdi
    and    %r8, %rdi                     # address rounded down to the granule
    mov    $3, %edx                      # PROT_READ | PROT_WRITE
    mov    $0x32, %r10d                  # MAP_PRIVATE | MAP_FIXED | MAP_ANONYMOUS
    mov    $-1, %r8                      # fd
    xor    %r9d, %r9d                    # offset
    mov    $9, %eax                      # SYS_mmap
    syscall
    pop    %r9
    pop    %rdx
    pop    %rsi
    pop    %rdi
    cmp    $-4096, %rax                  # -4095..-1: an errno
    ja     .Lreload
    lock incq 24(%r9)                    # the slot's fault count
    movabs $0x1122334455667788, %rax
    movslq 8(%rax), %rdi                 # eventfd
    lea    24(%rax), %rsi                # &1
    mov    $8, %edx
    mov    $1, %eax                      # SYS_write (EAGAIN when saturated: the watcher is due anyway)
    syscall
    ret                                  # the faulting instruction runs again, on zero pages
.Lreload:
    movabs $0x1122334455667788, %rax
.Lchain:
    jmp    *(%rax)                       # the previous handler, with rdi, rsi, rdx as received
