using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>The file seals of fcntl(2) "File Sealing" (F_ADD_SEALS, F_GET_SEALS).</summary>
[Flags]
public enum FileSeals
{
    None = 0,

    /// <summary>F_SEAL_SEAL: no seal can be added any more.</summary>
    Seal = 0x1,

    /// <summary>F_SEAL_SHRINK: the file cannot be made smaller, so no mapped page can vanish.</summary>
    Shrink = 0x2,

    /// <summary>F_SEAL_GROW: the file cannot be made larger.</summary>
    Grow = 0x4,

    /// <summary>F_SEAL_WRITE: the contents cannot change.</summary>
    Write = 0x8,

    /// <summary>F_SEAL_FUTURE_WRITE: no new writable mapping or write(2).</summary>
    FutureWrite = 0x10,
}

/// <summary>Anonymous shareable memory files (memfd_create(2)): the backing of guest RAM.</summary>
public static class MemFd
{
    /// <summary>
    /// What every memfd created here is sealed with. A peer that maps it may then count on its
    /// size: without F_SEAL_SHRINK a peer could truncate the file under our mapping, and the
    /// next access would raise SIGBUS (mmap(2)); F_SEAL_SEAL stops a peer from adding seals of
    /// its own (F_SEAL_FUTURE_WRITE would make our next writable mapping fail).
    /// </summary>
    public const FileSeals CreatedSeals = FileSeals.Shrink | FileSeals.Grow | FileSeals.Seal;

    /// <summary>Creates a close-on-exec memfd of <paramref name="size"/> bytes (zero-filled), sealed with <see cref="CreatedSeals"/>.</summary>
    public static SafeFileDescriptor Create(string name, ulong size)
    {
        ArgumentOutOfRangeException.ThrowIfZero(size);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(size, (ulong)long.MaxValue);
        int fd = Interop.Libc.MemfdCreate(name, Interop.Libc.MFD_CLOEXEC | Interop.Libc.MFD_ALLOW_SEALING);
        if (fd < 0)
        {
            throw PosixException.FromLastError("memfd_create");
        }

        var handle = new SafeFileDescriptor(fd);
        try
        {
            if (Syscall.ftruncate(fd, (long)size) != 0)
            {
                throw new PosixException("ftruncate", (int)NativeConvert.FromErrno(Stdlib.GetLastError()));
            }

            if (Interop.Libc.Fcntl(fd, Interop.Libc.F_ADD_SEALS, (int)CreatedSeals) != 0)
            {
                throw PosixException.FromLastError("fcntl(F_ADD_SEALS)");
            }
        }
        catch
        {
            handle.Dispose();
            throw;
        }

        return handle;
    }

    /// <summary>The size in bytes of the file behind <paramref name="fd"/> (fstat st_size).</summary>
    public static ulong GetFileSize(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using var lease = fd.Lease();
        if (Syscall.fstat(lease.Fd, out Stat stat) != 0)
        {
            throw new PosixException("fstat", (int)NativeConvert.FromErrno(Stdlib.GetLastError()));
        }

        return (ulong)stat.st_size;
    }

    /// <summary>The seals in force on <paramref name="fd"/>; <see cref="FileSeals.None"/> for a file that cannot be sealed (not shmem or hugetlbfs).</summary>
    public static FileSeals GetSeals(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using var lease = fd.Lease();
        int seals = Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_GET_SEALS, 0);
        return seals < 0 ? FileSeals.None : (FileSeals)seals;
    }

    /// <summary>
    /// Makes sure the file behind a peer's <paramref name="fd"/> can no longer shrink, sealing it
    /// with F_SEAL_SHRINK where the file still allows it, and says whether it now cannot. It
    /// cannot be sealed when it is not a memfd (a file on tmpfs or hugetlbfs, or on a disk) or
    /// was created without MFD_ALLOW_SEALING, or F_SEAL_SEAL is already set: such a file is
    /// sealed only if its owner sealed it so.
    /// </summary>
    public static bool TrySealAgainstShrinking(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using var lease = fd.Lease();
        // The outcome is read back rather than taken from the call: EPERM also comes when the
        // seal is already there under F_SEAL_SEAL (QEMU's memory-backend-memfd seals so).
        _ = Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_ADD_SEALS, (int)FileSeals.Shrink);
        int seals = Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_GET_SEALS, 0);
        return seals >= 0 && (seals & (int)FileSeals.Shrink) != 0;
    }

    /// <summary>
    /// The page size of the mappings of <paramref name="fd"/>: the huge page size on hugetlbfs
    /// (statfs(2) f_bsize), the system page size otherwise. Mapping offsets and lengths of a
    /// hugetlbfs file are multiples of it.
    /// </summary>
    public static unsafe ulong GetMappingPageSize(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using var lease = fd.Lease();
        Interop.Libc.StatFs stat;
        ulong pageSize = (ulong)Environment.SystemPageSize;
        if (Interop.Libc.Fstatfs(lease.Fd, &stat) == 0 && (stat.Type & 0xFFFFFFFF) == Interop.Libc.HUGETLBFS_MAGIC && stat.BlockSize > 0 && ulong.IsPow2((ulong)stat.BlockSize))
        {
            return Math.Max(pageSize, (ulong)stat.BlockSize);
        }

        return pageSize;
    }
}
