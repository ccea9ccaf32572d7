using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int F_GETFL = 3;
        internal const int F_SETFL = 4;
        internal const int O_NONBLOCK = 0x800;

        // fcntl(2) file sealing (memfd_create(2)): Mono.Posix's FcntlCommand has no sealing commands.
        internal const int F_ADD_SEALS = 1033;
        internal const int F_GET_SEALS = 1034;

        // fcntl is variadic in C; every command used here takes an int (or nothing), which the
        // x86-64 and AArch64 Linux calling conventions pass exactly as a fixed int argument.
        [LibraryImport(Libraries.Libc, EntryPoint = "fcntl", SetLastError = true)]
        internal static partial int Fcntl(int fd, int command, int argument);
    }
}
