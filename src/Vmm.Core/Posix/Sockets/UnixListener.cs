using System.Net.Sockets;
using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix.Sockets;

/// <summary>
/// A listening AF_UNIX stream socket bound to a filesystem path, reachable only by its owner
/// (mode 0600), that removes its socket file when disposed.
/// </summary>
public sealed class UnixListener : IDisposable
{
    /// <summary>Owner read+write: connect(2) on a path socket needs write permission (unix(7)).</summary>
    private const FilePermissions SocketMode = FilePermissions.S_IRUSR | FilePermissions.S_IWUSR;

    private readonly Socket _socket;
    private readonly ulong _device;
    private readonly ulong _inode;
    private int _disposed;

    private UnixListener(string path, Socket socket, ulong device, ulong inode)
    {
        Path = path;
        _socket = socket;
        _device = device;
        _inode = inode;
    }

    /// <summary>The socket file's path.</summary>
    public string Path { get; }

    /// <summary>
    /// Binds <paramref name="path"/> and listens. A stale socket file left by a dead process
    /// (connect refused) is replaced; a socket some process still accepts on is not touched
    /// (IOException), and neither is a path that is not a socket.
    /// </summary>
    /// <remarks>
    /// The socket is bound and listening under a staging name in the same directory before it
    /// takes <paramref name="path"/> (renameat2 with RENAME_NOREPLACE), so the name appears only
    /// once connect(2) on it succeeds: a front-end that watches the path to reconnect the moment
    /// its back-end returns is then never refused by a socket bound but not yet listening. When
    /// the staging name would not fit in sun_path, or the filesystem cannot rename without
    /// replacing, the socket is bound at <paramref name="path"/> directly.
    /// </remarks>
    public static UnixListener Bind(string path, int backlog = 16)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        path = System.IO.Path.GetFullPath(path);
        RemoveStaleSocket(path);

        // The socket is made with Mono.Posix rather than Socket.Bind: a BCL Socket that bound a
        // path deletes that path on Dispose whatever it has become meanwhile, while this
        // listener unlinks only the inode it created (see Dispose).
        int fd = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC, 0);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"socket(AF_UNIX, SOCK_STREAM) failed: {PosixErrors.Describe(errno)}");
        }

        var handle = new SafeSocketHandle((IntPtr)fd, ownsHandle: true);
        string? staging = StagingPath(path);
        string bound = staging ?? path;
        bool created = false;
        try
        {
            if (Syscall.bind(fd, new SockaddrUn(bound)) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"Cannot bind socket {bound}: {PosixErrors.Describe(errno)}");
            }

            created = true;

            // bind(2) created the file with 0777 & ~umask, and fchmod does not apply to sockets.
            // Narrow it before listen(2): until then every connect(2) is refused (ECONNREFUSED),
            // so nobody else can get in through the wider mode.
            Stat stat = RestrictToOwner(bound);

            if (Syscall.listen(fd, backlog) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"listen on socket {path} failed: {PosixErrors.Describe(errno)}");
            }

            if (staging is not null)
            {
                MoveIntoPlace(staging, path);
                bound = path;
            }

            return new UnixListener(path, new Socket(handle), stat.st_dev, stat.st_ino);
        }
        catch
        {
            handle.Dispose();
            if (created)
            {
                Syscall.unlink(bound);
            }

            throw;
        }
    }

    /// <summary>sun_path holds 108 bytes with its terminating NUL (unix(7)).</summary>
    private const int MaxSocketPathBytes = 107;

    /// <summary>A name beside <paramref name="path"/> to bind and listen under, or null when it would not fit in sun_path.</summary>
    private static string? StagingPath(string path)
    {
        string directory = System.IO.Path.GetDirectoryName(path) ?? "/";
        string name = $".{System.IO.Path.GetFileName(path)}.{Environment.ProcessId}.{Random.Shared.Next():x8}.bind";
        string staging = System.IO.Path.Combine(directory, name);
        return System.Text.Encoding.UTF8.GetByteCount(staging) <= MaxSocketPathBytes ? staging : null;
    }

    /// <summary>
    /// Gives the listening socket at <paramref name="staging"/> its real name. RENAME_NOREPLACE
    /// keeps a socket another process bound at <paramref name="path"/> since the stale check
    /// untouched (as bind(2) there would have failed with EADDRINUSE); a filesystem without it
    /// gets link(2), which also refuses an existing name, and unlink(2) of the staging name.
    /// </summary>
    private static void MoveIntoPlace(string staging, string path)
    {
        if (Interop.Libc.RenameAt2(Interop.Libc.AT_FDCWD, staging, Interop.Libc.AT_FDCWD, path, Interop.Libc.RENAME_NOREPLACE) == 0)
        {
            return;
        }

        int errno = Marshal.GetLastPInvokeError();
        if (errno is Interop.Errno.EINVAL or Interop.Errno.ENOSYS)
        {
            if (Syscall.link(staging, path) == 0)
            {
                Syscall.unlink(staging);
                return;
            }

            errno = Marshal.GetLastPInvokeError();
        }

        throw errno == Interop.Errno.EEXIST
            ? new IOException($"socket path {path} was taken by another process while this one was binding it.")
            : new IOException($"Cannot move socket {staging} to {path}: {PosixErrors.Describe(errno)}");
    }

    /// <summary>Waits for the next connection.</summary>
    public async ValueTask<Socket> AcceptAsync(CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        return await _socket.AcceptAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Stops listening and removes the socket file, if it is still the one this listener created.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _socket.Dispose();

        // Another listener may have replaced our (then stale-looking) file since; only unlink
        // the inode we created.
        if (Syscall.lstat(Path, out Stat stat) == 0 && stat.st_dev == _device && stat.st_ino == _inode)
        {
            Syscall.unlink(Path);
        }
    }

    /// <summary>
    /// chmod 0600 of the socket file at <paramref name="path"/>, without following a symbolic
    /// link: whoever can write the directory could replace the file by a link between bind(2)
    /// and here, and chmod(2) would then change the mode of whatever the link names. The path
    /// is opened with O_PATH | O_NOFOLLOW (a link opens as the link itself), checked to be a
    /// socket, and changed through its /proc/self/fd entry, which names exactly that inode.
    /// Returns the socket file's stat, by which <see cref="Dispose"/> recognises it.
    /// </summary>
    internal static Stat RestrictToOwner(string path)
    {
        int fd = Interop.Libc.Open(path, Interop.Libc.O_PATH | Interop.Libc.O_NOFOLLOW | Interop.Libc.O_CLOEXEC);
        if (fd < 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"Cannot open socket {path} to restrict its mode: {PosixErrors.Describe(errno)}");
        }

        using var handle = new SafeFileDescriptor(fd);
        if (Syscall.fstat(fd, out Stat stat) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"fstat of socket {path} failed: {PosixErrors.Describe(errno)}");
        }

        if ((stat.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFSOCK)
        {
            throw new IOException($"{path} was replaced by something other than a socket before its mode could be set; refusing to listen on it.");
        }

        if (Syscall.chmod($"/proc/self/fd/{fd}", SocketMode) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"chmod 0600 on socket {path} failed: {PosixErrors.Describe(errno)}");
        }

        return stat;
    }

    private static void RemoveStaleSocket(string path)
    {
        if (Syscall.lstat(path, out Stat stat) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            if (errno == PosixErrors.ENOENT)
            {
                return;
            }

            throw new IOException($"Cannot inspect {path}: {PosixErrors.Describe(errno)}");
        }

        if ((stat.st_mode & FilePermissions.S_IFMT) != FilePermissions.S_IFSOCK)
        {
            throw new IOException($"{path} exists and is not a socket; refusing to replace it.");
        }

        if (IsListenedOn(path))
        {
            throw new IOException($"socket path {path} is in use by another process.");
        }

        // Unlink only the inode we probed, in case it was replaced meanwhile.
        if (Syscall.lstat(path, out Stat again) == 0 && again.st_dev == stat.st_dev && again.st_ino == stat.st_ino)
        {
            if (Syscall.unlink(path) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"Cannot remove stale socket {path}: {PosixErrors.Describe(errno)}");
            }
        }
    }

    private static bool IsListenedOn(string path)
    {
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);

        // Non-blocking: an AF_UNIX connect completes at once, or fails with ECONNREFUSED
        // (nobody listens: the file outlived its process) or EAGAIN (a live listener whose
        // backlog is full), instead of waiting on that backlog.
        probe.Blocking = false;
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
            return true;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return false;
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.WouldBlock)
        {
            return true;
        }
    }
}
