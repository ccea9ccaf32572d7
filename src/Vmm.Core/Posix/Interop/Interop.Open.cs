using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int O_PATH = 0x200000;

        /// <summary>O_NOFOLLOW: 0400000 on x86-64 (asm-generic), 0100000 on AArch64 (its own fcntl.h).</summary>
        internal static int O_NOFOLLOW => RuntimeInformation.ProcessArchitecture == Architecture.Arm64 ? 0x8000 : 0x20000;

        // Mono.Posix's OpenFlags has O_PATH, but its helper does not translate it (open fails with EINVAL).
        [LibraryImport(Libraries.Libc, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Open(string path, int flags);
    }
}
