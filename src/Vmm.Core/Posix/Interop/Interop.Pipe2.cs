using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int O_CLOEXEC = 0x80000;

        // Mono.Posix has pipe(2) but not pipe2(2): without O_CLOEXEC a child process started
        // between the two calls would inherit both ends and keep the reader from seeing EOF.
        [LibraryImport(Libraries.Libc, EntryPoint = "pipe2", SetLastError = true)]
        internal static unsafe partial int Pipe2(int* fds, int flags);
    }
}
