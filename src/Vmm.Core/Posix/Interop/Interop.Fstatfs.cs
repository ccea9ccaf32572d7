using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    internal static partial class Libc
    {
        /// <summary>statfs(2) f_type of hugetlbfs (linux/magic.h).</summary>
        internal const long HUGETLBFS_MAGIC = 0x958458f6;

        /// <summary>
        /// The head of glibc's struct statfs on 64-bit Linux: f_type and f_bsize are longs at
        /// offsets 0 and 8; the rest (to 120 bytes) is not read but must be there for the kernel.
        /// </summary>
        [StructLayout(LayoutKind.Sequential)]
        internal unsafe struct StatFs
        {
            public long Type;
            public long BlockSize;
            public fixed long Rest[13];
        }

        // Mono.Posix has fstatvfs, which drops f_type: only f_type tells hugetlbfs from tmpfs.
        [LibraryImport(Libraries.Libc, EntryPoint = "fstatfs", SetLastError = true)]
        internal static unsafe partial int Fstatfs(int fd, StatFs* buffer);
    }
}
