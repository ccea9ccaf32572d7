using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int EFD_CLOEXEC = 0x80000;
        internal const int EFD_NONBLOCK = 0x800;

        // Neither Mono.Posix.NETStandard nor Mono.Unix has eventfd (checked against Mono.Posix.NETStandard 1.0.0).
        [LibraryImport(Libraries.Libc, EntryPoint = "eventfd", SetLastError = true)]
        internal static partial int EventFd(uint initialValue, int flags);
    }
}
