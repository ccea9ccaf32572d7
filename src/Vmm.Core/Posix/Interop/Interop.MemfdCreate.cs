using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const uint MFD_CLOEXEC = 0x0001;
        internal const uint MFD_ALLOW_SEALING = 0x0002;

        // Mono.Posix.NETStandard 1.0.0 has no memfd_create.
        [LibraryImport(Libraries.Libc, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int MemfdCreate(string name, uint flags);
    }
}
