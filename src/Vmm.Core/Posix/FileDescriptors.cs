using System.Text;
using Mono.Unix.Native;

namespace Vmm.Core.Posix;

/// <summary>What an open file descriptor refers to.</summary>
public enum FileKind
{
    Other,
    EventFd,
    Pipe,
    Socket,
    RegularFile,
    CharacterDevice,
    BlockDevice,
    Directory,
}

/// <summary>
/// Questions asked of a descriptor a peer handed over, before it is trusted with a role: what
/// kind of file it is, and making it non-blocking so that no thread here can be stalled on it.
/// </summary>
public static class FileDescriptors
{
    /// <summary>
    /// The kind of file behind <paramref name="fd"/>: fstat(2) for the file type, and for anonymous
    /// inodes (which fstat does not tell apart) the /proc/self/fd link, which reads
    /// "anon_inode:[eventfd]" for an eventfd (proc(5)).
    /// </summary>
    public static FileKind GetKind(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using FdLease lease = fd.Lease();
        return KindOf(lease.Fd, out _);
    }

    /// <summary>A few words for messages: "an eventfd", "a pipe", "the file /dev/full".</summary>
    public static string Describe(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using FdLease lease = fd.Lease();
        FileKind kind = KindOf(lease.Fd, out string? target);
        return kind switch
        {
            FileKind.EventFd => "an eventfd",
            FileKind.Pipe => "a pipe",
            FileKind.Socket => "a socket",
            FileKind.Directory => $"the directory {target}",
            FileKind.RegularFile or FileKind.CharacterDevice or FileKind.BlockDevice => $"the file {target}",
            _ => target is null ? "a descriptor of unknown kind" : $"'{target}'",
        };
    }

    /// <summary>
    /// Sets O_NONBLOCK. The flag belongs to the open file, which a peer that sent the descriptor
    /// shares: readers and writers of a shared eventfd must then poll before they block (both
    /// sides here do; qemu-storage-daemon sets the flag on every descriptor it receives).
    /// </summary>
    public static void SetNonBlocking(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using FdLease lease = fd.Lease();
        int flags = Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_GETFL, 0);
        if (flags < 0)
        {
            throw PosixException.FromLastError("fcntl(F_GETFL)");
        }

        if ((flags & Interop.Libc.O_NONBLOCK) == 0 && Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_SETFL, flags | Interop.Libc.O_NONBLOCK) < 0)
        {
            throw PosixException.FromLastError("fcntl(F_SETFL)");
        }
    }

    /// <summary>True when O_NONBLOCK is set on the open file.</summary>
    public static bool IsNonBlocking(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using FdLease lease = fd.Lease();
        int flags = Interop.Libc.Fcntl(lease.Fd, Interop.Libc.F_GETFL, 0);
        return flags < 0 ? throw PosixException.FromLastError("fcntl(F_GETFL)") : (flags & Interop.Libc.O_NONBLOCK) != 0;
    }

    private static FileKind KindOf(int fd, out string? target)
    {
        target = ProcLink(fd);
        if (Syscall.fstat(fd, out Stat stat) != 0)
        {
            throw new PosixException("fstat", (int)NativeConvert.FromErrno(Stdlib.GetLastError()));
        }

        switch (stat.st_mode & FilePermissions.S_IFMT)
        {
            case FilePermissions.S_IFIFO:
                return FileKind.Pipe;
            case FilePermissions.S_IFSOCK:
                return FileKind.Socket;
            case FilePermissions.S_IFCHR:
                return FileKind.CharacterDevice;
            case FilePermissions.S_IFBLK:
                return FileKind.BlockDevice;
            case FilePermissions.S_IFDIR:
                return FileKind.Directory;
        }

        // Anonymous inodes have no type bits (or, on newer kernels, those of a regular file):
        // only their link names them.
        if (target == "anon_inode:[eventfd]")
        {
            return FileKind.EventFd;
        }

        return (stat.st_mode & FilePermissions.S_IFMT) == FilePermissions.S_IFREG && target is not null && !target.StartsWith("anon_inode:", StringComparison.Ordinal)
            ? FileKind.RegularFile
            : FileKind.Other;
    }

    private static string? ProcLink(int fd)
    {
        var buffer = new StringBuilder(256);
        int n = Syscall.readlink($"/proc/self/fd/{fd}", buffer);
        return n < 0 ? null : buffer.ToString();
    }
}
