using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using System.Text;
using Mono.Unix.Native;
using NUnit.Framework;
using Vmm.Core.Posix;
using Vmm.Core.Posix.Sockets;

namespace Vmm.Core.Tests.Posix;

[TestFixture]
[SupportedOSPlatform("linux")]
public sealed class UnixSocketsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private string _directory = null!;

    [SetUp]
    public void SetUp()
    {
        // Short, private directory: sun_path holds at most 107 bytes (unix(7)).
        _directory = Directory.CreateTempSubdirectory("vmm-").FullName;
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_directory, recursive: true);

    [Test]
    public async Task SocketPair_must_be_connected_and_close_on_exec()
    {
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        using (b)
        {
            await a.SendAsync("ping"u8.ToArray(), SocketFlags.None).WaitAsync(Timeout);
            var buffer = new byte[4];
            int n = await b.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(Timeout);

            Assert.That(Encoding.ASCII.GetString(buffer, 0, n), Is.EqualTo("ping"));
            Assert.That(IsCloseOnExec(a.SafeHandle), Is.True);
            Assert.That(IsCloseOnExec(b.SafeHandle), Is.True);
            Assert.That(a.AddressFamily, Is.EqualTo(AddressFamily.Unix));
        }
    }

    [Test]
    public void FdPassing_must_deliver_fds_with_the_data()
    {
        string file = Path.Combine(_directory, "data");
        File.WriteAllText(file, "hello");
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        using (b)
        using (var handle = File.OpenHandle(file))
        {
            nint sent = FdPassing.TrySend(a, "msg"u8, [handle, handle]);
            var fds = new List<SafeFileDescriptor>();
            var buffer = new byte[16];
            nint received = FdPassing.TryReceive(b, buffer, fds, 8, out bool truncated);

            Assert.That((int)sent, Is.EqualTo(3));
            Assert.That((int)received, Is.EqualTo(3));
            Assert.That(truncated, Is.False);
            Assert.That(fds, Has.Count.EqualTo(2));
            foreach (SafeFileDescriptor fd in fds)
            {
                Assert.That(IsCloseOnExec(fd), Is.True, "MSG_CMSG_CLOEXEC");
                Assert.That(ReadAll(fd), Is.EqualTo("hello"));
                fd.Dispose();
            }
        }
    }

    [Test]
    public void FdPassing_must_close_every_fd_when_more_arrive_than_allowed()
    {
        string file = Path.Combine(_directory, "data");
        File.WriteAllText(file, "x");
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        using (b)
        using (var handle = File.OpenHandle(file))
        {
            int before = Vmm.TestKit.OpenDescriptors.Count();
            Assert.That(FdPassing.TrySend(a, "abcd"u8, [handle, handle, handle, handle, handle]), Is.EqualTo((nint)4));
            var fds = new List<SafeFileDescriptor>();
            nint n = FdPassing.TryReceive(b, new byte[4], fds, 2, out bool truncated);

            Assert.That((int)n, Is.EqualTo(4));
            Assert.That(truncated, Is.True);
            Assert.That(fds, Is.Empty);
            Assert.That(Vmm.TestKit.OpenDescriptors.Count(), Is.EqualTo(before));
        }
    }

    [Test]
    public void FdPassing_must_report_errno_instead_of_blocking_or_raising_a_signal()
    {
        (Socket a, Socket b) = UnixSocketPair.Create();
        using (a)
        {
            nint wouldBlock = FdPassing.TryReceive(a, new byte[4], [], 1, out _);
            b.Dispose();
            nint eof = FdPassing.TryReceive(a, new byte[4], [], 1, out _);
            nint pipe = FdPassing.TrySend(a, "x"u8, []);

            Assert.That((int)wouldBlock, Is.EqualTo(-PosixErrors.EAGAIN));
            Assert.That((int)eof, Is.Zero);
            Assert.That((int)pipe, Is.EqualTo(-PosixErrors.EPIPE));
        }
    }

    [Test]
    public async Task Listener_must_create_a_0600_socket_accept_and_remove_it_on_dispose()
    {
        string path = Path.Combine(_directory, "s.sock");
        using (var listener = UnixListener.Bind(path))
        {
            Assert.That(File.GetUnixFileMode(path), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));

            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            Task<Socket> accept = listener.AcceptAsync().AsTask();
            await client.ConnectAsync(new UnixDomainSocketEndPoint(path)).WaitAsync(Timeout);
            using Socket server = await accept.WaitAsync(Timeout);
            await client.SendAsync("hi"u8.ToArray(), SocketFlags.None).WaitAsync(Timeout);
            var buffer = new byte[2];
            Assert.That(await server.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(Timeout), Is.EqualTo(2));
        }

        Assert.That(File.Exists(path), Is.False);
    }

    [Test]
    public void Listener_socket_path_must_accept_connections_from_the_moment_it_exists()
    {
        // A front-end that watches the path connects the moment the name appears: a socket bound
        // there but not yet listening would refuse it. A spinning watcher tries each new socket
        // at once; with a bind at the path itself some of these connects land between bind(2)
        // and listen(2).
        string path = Path.Combine(_directory, "s.sock");
        int refused = 0;
        for (int round = 0; round < 200; round++)
        {
            using var appeared = new ManualResetEventSlim();
            var watcher = new Thread(() =>
            {
                while (Syscall.lstat(path, out _) != 0)
                {
                }

                using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    client.Connect(new UnixDomainSocketEndPoint(path));
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
                {
                    Interlocked.Increment(ref refused);
                }

                appeared.Set();
            });
            watcher.Start();
            using (UnixListener.Bind(path))
            {
                Assert.That(appeared.Wait(Timeout), Is.True, "the watcher never saw the socket");
            }

            watcher.Join();
        }

        Assert.That(refused, Is.Zero, "connects refused by a socket that had its name before it listened");
        Assert.That(Directory.GetFileSystemEntries(_directory), Is.Empty, "a staging name was left behind");
    }

    [Test]
    public async Task Listener_must_bind_at_its_path_directly_when_a_staging_name_would_not_fit_in_sun_path()
    {
        // 107 bytes in all: the longest path sun_path takes; no longer staging name fits.
        string prefix = _directory + "/";
        string path = prefix + new string('s', 107 - Encoding.UTF8.GetByteCount(prefix));
        using (var listener = UnixListener.Bind(path))
        {
            using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            Task<Socket> accept = listener.AcceptAsync().AsTask();
            await client.ConnectAsync(new UnixDomainSocketEndPoint(path)).WaitAsync(Timeout);
            using Socket server = await accept.WaitAsync(Timeout);
            Assert.That(Directory.GetFileSystemEntries(_directory), Is.EqualTo(new[] { path }));
        }

        Assert.That(Directory.GetFileSystemEntries(_directory), Is.Empty);
    }

    [Test]
    public void Listener_must_replace_a_stale_socket_file()
    {
        string path = Path.Combine(_directory, "s.sock");
        // Bound, never listening, then closed: the file stays, as after a crash. (A BCL Socket
        // would delete its file on Dispose, hence the raw calls.)
        int dead = Syscall.socket(UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, 0, 0);
        Assert.That(Syscall.bind(dead, new SockaddrUn(path)), Is.Zero);
        Assert.That(Syscall.close(dead), Is.Zero);

        Assert.That(File.Exists(path), Is.True);
        using var listener = UnixListener.Bind(path);
        Assert.That(File.GetUnixFileMode(path), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite));
    }

    [Test]
    public async Task Listener_must_not_steal_a_live_socket()
    {
        string path = Path.Combine(_directory, "s.sock");
        using var first = UnixListener.Bind(path);

        var e = Assert.Throws<IOException>(() => UnixListener.Bind(path).Dispose());
        Assert.That(e!.Message, Does.Contain("in use by another process"));

        // The first listener still owns the path: the probe connection is in its queue.
        using Socket probe = await first.AcceptAsync().AsTask().WaitAsync(Timeout);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        Task<Socket> accept = first.AcceptAsync().AsTask();
        await client.ConnectAsync(new UnixDomainSocketEndPoint(path)).WaitAsync(Timeout);
        using Socket server = await accept.WaitAsync(Timeout);
        Assert.That(server.Connected, Is.True);
    }

    [Test]
    public void Listener_must_not_delete_a_file_that_is_not_a_socket()
    {
        string path = Path.Combine(_directory, "precious");
        File.WriteAllText(path, "keep me");

        var e = Assert.Throws<IOException>(() => UnixListener.Bind(path).Dispose());

        Assert.That(e!.Message, Does.Contain("not a socket"));
        Assert.That(File.ReadAllText(path), Is.EqualTo("keep me"));
    }

    private static bool IsCloseOnExec(SafeHandle handle)
    {
        bool added = false;
        handle.DangerousAddRef(ref added);
        try
        {
            int flags = Syscall.fcntl((int)handle.DangerousGetHandle(), FcntlCommand.F_GETFD);
            Assert.That(flags, Is.GreaterThanOrEqualTo(0));
            return (flags & 1) != 0; // FD_CLOEXEC, fcntl(2)
        }
        finally
        {
            handle.DangerousRelease();
        }
    }

    private static unsafe string ReadAll(SafeFileDescriptor fd)
    {
        var buffer = new byte[64];
        using FdLease lease = fd.Lease();
        fixed (byte* p = buffer)
        {
            long n = Syscall.pread(lease.Fd, p, (ulong)buffer.Length, 0);
            Assert.That(n, Is.GreaterThanOrEqualTo(0));
            return Encoding.ASCII.GetString(buffer, 0, (int)n);
        }
    }

    [Test]
    public void Restricting_the_socket_mode_does_not_follow_a_symlink_swapped_in_after_bind()
    {
        // Someone who can write the directory replaces the bound socket by a link to a file of
        // ours between bind(2) and chmod(2); the file's mode must not change.
        string target = Path.Combine(_directory, "precious");
        File.WriteAllText(target, "x");
        File.SetUnixFileMode(target, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead);
        string path = Path.Combine(_directory, "s.sock");
        File.CreateSymbolicLink(path, target);

        Assert.That(() => UnixListener.RestrictToOwner(path), Throws.InstanceOf<IOException>().With.Message.Contains("replaced"));
        Assert.That(File.GetUnixFileMode(target), Is.EqualTo(UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead | UnixFileMode.OtherRead));
    }
}
