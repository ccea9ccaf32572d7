using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        internal const int AT_FDCWD = -100;

        /// <summary>renameat2(2): fail with EEXIST rather than replace the target.</summary>
        internal const uint RENAME_NOREPLACE = 1;

        // Mono.Posix has rename(2), which replaces whatever holds the target name.
        [LibraryImport(Libraries.Libc, EntryPoint = "renameat2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int RenameAt2(int oldDirFd, string oldPath, int newDirFd, string newPath, uint flags);
    }
}
