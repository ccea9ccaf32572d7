namespace Vmm.Core.Posix;

public static partial class SigbusGuard
{
    /// <summary>The value the handler's three <c>movabs</c> carry until the table address replaces it.</summary>
    private const ulong TablePlaceholder = 0x1122334455667788;

    /// <summary>
    /// SigbusGuard.x86_64.S assembled (GNU as 2.40, <c>as -o guard.o SigbusGuard.x86_64.S;
    /// objcopy -O binary -j .text guard.o guard.bin</c>), one instruction per line with its
    /// disassembly; a test assembles the source again and compares.
    /// </summary>
    internal static byte[] X64Handler() =>
    [
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // 00: movabs $0x1122334455667788,%rax
        0x83, 0x7e, 0x08, 0x02,                                      // 0a: cmpl $0x2,0x8(%rsi)
        0x0f, 0x85, 0x8e, 0x00, 0x00, 0x00,                          // 0e: jne a2 (+0xa2)
        0x4c, 0x8b, 0x46, 0x10,                                      // 14: mov 0x10(%rsi),%r8
        0x48, 0x8b, 0x48, 0x10,                                      // 18: mov 0x10(%rax),%rcx
        0x4c, 0x8d, 0x48, 0x20,                                      // 1c: lea 0x20(%rax),%r9
        0x48, 0x85, 0xc9,                                            // 20: test %rcx,%rcx
        0x74, 0x7d,                                                  // 23: je a2 (+0xa2)
        0x4d, 0x3b, 0x41, 0x08,                                      // 25: cmp 0x8(%r9),%r8
        0x73, 0x05,                                                  // 29: jae 30 (+0x30)
        0x4d, 0x3b, 0x01,                                            // 2b: cmp (%r9),%r8
        0x73, 0x09,                                                  // 2e: jae 39 (+0x39)
        0x49, 0x83, 0xc1, 0x20,                                      // 30: add $0x20,%r9
        0x48, 0xff, 0xc9,                                            // 34: dec %rcx
        0xeb, 0xe7,                                                  // 37: jmp 20 (+0x20)
        0x57,                                                        // 39: push %rdi
        0x56,                                                        // 3a: push %rsi
        0x52,                                                        // 3b: push %rdx
        0x41, 0x51,                                                  // 3c: push %r9
        0x49, 0x8b, 0x71, 0x10,                                      // 3e: mov 0x10(%r9),%rsi
        0x48, 0x89, 0xf7,                                            // 42: mov %rsi,%rdi
        0x48, 0xf7, 0xdf,                                            // 45: neg %rdi
        0x4c, 0x21, 0xc7,                                            // 48: and %r8,%rdi
        0xba, 0x03, 0x00, 0x00, 0x00,                                // 4b: mov $0x3,%edx
        0x41, 0xba, 0x32, 0x00, 0x00, 0x00,                          // 50: mov $0x32,%r10d
        0x49, 0xc7, 0xc0, 0xff, 0xff, 0xff, 0xff,                    // 56: mov $0xffffffffffffffff,%r8
        0x45, 0x31, 0xc9,                                            // 5d: xor %r9d,%r9d
        0xb8, 0x09, 0x00, 0x00, 0x00,                                // 60: mov $0x9,%eax
        0x0f, 0x05,                                                  // 65: syscall
        0x41, 0x59,                                                  // 67: pop %r9
        0x5a,                                                        // 69: pop %rdx
        0x5e,                                                        // 6a: pop %rsi
        0x5f,                                                        // 6b: pop %rdi
        0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff,                          // 6c: cmp $0xfffffffffffff000,%rax
        0x77, 0x24,                                                  // 72: ja 98 (+0x98)
        0xf0, 0x49, 0xff, 0x41, 0x18,                                // 74: lock incq 0x18(%r9)
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // 79: movabs $0x1122334455667788,%rax
        0x48, 0x63, 0x78, 0x08,                                      // 83: movslq 0x8(%rax),%rdi
        0x48, 0x8d, 0x70, 0x18,                                      // 87: lea 0x18(%rax),%rsi
        0xba, 0x08, 0x00, 0x00, 0x00,                                // 8b: mov $0x8,%edx
        0xb8, 0x01, 0x00, 0x00, 0x00,                                // 90: mov $0x1,%eax
        0x0f, 0x05,                                                  // 95: syscall
        0xc3,                                                        // 97: ret
        0x48, 0xb8, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11,  // 98: movabs $0x1122334455667788,%rax
        0xff, 0x20,                                                  // a2: jmp *(%rax)
    ];
}
