using System.Net.Sockets;
using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix.Sockets;

/// <summary>socketpair(2) for two connected AF_UNIX stream sockets, as BCL <see cref="Socket"/>s.</summary>
public static class UnixSocketPair
{
    /// <summary>
    /// Creates two connected AF_UNIX SOCK_STREAM sockets with SOCK_CLOEXEC set atomically
    /// (socketpair(2)), so no child process started meanwhile inherits them.
    /// </summary>
    public static (Socket First, Socket Second) Create()
    {
        // Protocol 0 is "the default for the family" (socket(2)); Mono.Posix passes 0 through.
        int rc = Syscall.socketpair(
            UnixAddressFamily.AF_UNIX, UnixSocketType.SOCK_STREAM, UnixSocketFlags.SOCK_CLOEXEC,
            (UnixSocketProtocol)0, out int fd1, out int fd2);
        if (rc != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            throw new IOException($"socketpair(AF_UNIX, SOCK_STREAM) failed: {PosixErrors.Describe(errno)}");
        }

        // Each fd goes into an owning handle before anything else can throw.
        var h1 = new SafeSocketHandle((IntPtr)fd1, ownsHandle: true);
        var h2 = new SafeSocketHandle((IntPtr)fd2, ownsHandle: true);
        Socket? first = null;
        try
        {
            first = new Socket(h1);
            return (first, new Socket(h2));
        }
        catch
        {
            if (first is null)
            {
                h1.Dispose();
            }
            else
            {
                first.Dispose();
            }

            h2.Dispose();
            throw;
        }
    }
}
