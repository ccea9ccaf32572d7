using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>Anonymous shareable memory files (memfd_create(2)): the backing of guest RAM.</summary>
public static class MemFd
{
    /// <summary>Creates a close-on-exec memfd of <paramref name="size"/> bytes (zero-filled).</summary>
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
        using var lease = fd.Lease();
        if (Syscall.fstat(lease.Fd, out Stat stat) != 0)
        {
            throw new PosixException("fstat", (int)NativeConvert.FromErrno(Stdlib.GetLastError()));
        }

        return (ulong)stat.st_size;
    }
}
