using System.Runtime.InteropServices;

namespace Vmm.Core.Posix;

internal static partial class Interop
{
    /// <summary>
    /// File and block-device I/O the disk backends need and neither the BCL nor Mono.Posix offer:
    /// open with O_DIRECT / O_EXCL, preadv / pwritev2 on native iovecs (pwritev2 for RWF_DSYNC),
    /// fdatasync, fallocate, the block-device ioctls, statx (STATX_DIOALIGN) and fstatfs.
    /// </summary>
    internal static unsafe partial class FileIo
    {
        internal const int O_RDONLY = 0;
        internal const int O_RDWR = 2;
        internal const int O_EXCL = 0x80;
        internal const int O_CLOEXEC = 0x80000;

        /// <summary>O_DIRECT differs between the architectures (asm/fcntl.h): 040000 on x86-64, 0200000 on arm64.</summary>
        internal static readonly int O_DIRECT = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => 0x4000,
            Architecture.Arm64 => 0x10000,
            _ => throw new PlatformNotSupportedException($"O_DIRECT is not known for {RuntimeInformation.ProcessArchitecture}."),
        };

        internal const int RWF_DSYNC = 0x2;

        internal const int FALLOC_FL_KEEP_SIZE = 0x01;
        internal const int FALLOC_FL_PUNCH_HOLE = 0x02;
        internal const int FALLOC_FL_ZERO_RANGE = 0x10;

        // linux/fs.h: _IO(0x12, n), and BLKGETSIZE64 = _IOR(0x12, 114, size_t); the generic ioctl
        // encoding is the same on x86-64 and arm64.
        internal const ulong BLKSSZGET = 0x1268;
        internal const ulong BLKGETSIZE64 = 0x80081272;
        internal const ulong BLKDISCARD = 0x1277;
        internal const ulong BLKIOMIN = 0x1278;
        internal const ulong BLKIOOPT = 0x1279;
        internal const ulong BLKPBSZGET = 0x127b;
        internal const ulong BLKZEROOUT = 0x127f;

        internal const int AT_FDCWD = -100;
        internal const int AT_EMPTY_PATH = 0x1000;
        internal const uint STATX_TYPE = 0x0001;
        internal const uint STATX_MODE = 0x0002;
        internal const uint STATX_SIZE = 0x0200;
        internal const uint STATX_DIOALIGN = 0x2000;

        internal const ushort S_IFMT = 0xF000;
        internal const ushort S_IFBLK = 0x6000;
        internal const ushort S_IFREG = 0x8000;

        internal const long TMPFS_MAGIC = 0x01021994;
        internal const long RAMFS_MAGIC = unchecked((long)0x858458f6);

        /// <summary>struct statx (256 bytes): only the fields read here are named; offsets from linux/stat.h.</summary>
        [StructLayout(LayoutKind.Explicit, Size = 256)]
        internal struct Statx
        {
            [FieldOffset(0)] public uint Mask;
            [FieldOffset(4)] public uint BlkSize;
            [FieldOffset(28)] public ushort Mode;
            [FieldOffset(40)] public ulong Size;
            [FieldOffset(152)] public uint DioMemAlign;
            [FieldOffset(156)] public uint DioOffsetAlign;
        }

        [LibraryImport(Libraries.Libc, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int Open(string path, int flags, int mode);

        // One buffer (most requests): pread / pwrite skip the iovec import preadv / pwritev pay for.
        [LibraryImport(Libraries.Libc, EntryPoint = "pread64", SetLastError = true)]
        internal static partial nint PRead(int fd, byte* buffer, nuint count, long offset);

        [LibraryImport(Libraries.Libc, EntryPoint = "pwrite64", SetLastError = true)]
        internal static partial nint PWrite(int fd, byte* buffer, nuint count, long offset);

        [LibraryImport(Libraries.Libc, EntryPoint = "preadv", SetLastError = true)]
        internal static partial nint PReadV(int fd, Storage.IoVector* iov, int iovcnt, long offset);

        [LibraryImport(Libraries.Libc, EntryPoint = "pwritev2", SetLastError = true)]
        internal static partial nint PWriteV2(int fd, Storage.IoVector* iov, int iovcnt, long offset, int flags);

        [LibraryImport(Libraries.Libc, EntryPoint = "fdatasync", SetLastError = true)]
        internal static partial int FDataSync(int fd);

        [LibraryImport(Libraries.Libc, EntryPoint = "fallocate", SetLastError = true)]
        internal static partial int FAllocate(int fd, int mode, long offset, long length);

        [LibraryImport(Libraries.Libc, EntryPoint = "ioctl", SetLastError = true)]
        internal static partial int Ioctl(int fd, ulong request, void* argument);

        [LibraryImport(Libraries.Libc, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
        internal static partial int StatX(int dirfd, string path, int flags, uint mask, Statx* buffer);

        /// <summary>fstatfs(2) into a buffer; <c>f_type</c> is its first field, a long on both 64-bit ABIs.</summary>
        [LibraryImport(Libraries.Libc, EntryPoint = "fstatfs", SetLastError = true)]
        internal static partial int FStatFs(int fd, void* buffer);
    }
}
