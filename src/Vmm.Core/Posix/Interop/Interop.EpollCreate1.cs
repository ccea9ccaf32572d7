using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int EPOLL_CLOEXEC = 0x80000;

        // Mono.Posix.NETStandard's epoll_create fails when given EPOLL_CLOEXEC, and without the
        // flag the instance would be inherited by every child process (vmm run starts back-ends).
        [LibraryImport(Libraries.Libc, EntryPoint = "epoll_create1", SetLastError = true)]
        internal static partial int EpollCreate1(int flags);
    }
}
