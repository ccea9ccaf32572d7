using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix.Sockets;

/// <summary>
/// The errno values the socket layer reports (as negative results, see <see cref="FdPassing"/>),
/// translated to this platform's numbering by Mono.Posix so callers need no libc knowledge.
/// </summary>
public static class PosixErrors
{
    public static readonly int EAGAIN = NativeConvert.FromErrno(Errno.EAGAIN);
    public static readonly int EWOULDBLOCK = NativeConvert.FromErrno(Errno.EWOULDBLOCK);
    public static readonly int EINTR = NativeConvert.FromErrno(Errno.EINTR);
    public static readonly int EPIPE = NativeConvert.FromErrno(Errno.EPIPE);
    public static readonly int ECONNRESET = NativeConvert.FromErrno(Errno.ECONNRESET);
    public static readonly int ECONNREFUSED = NativeConvert.FromErrno(Errno.ECONNREFUSED);
    public static readonly int ENOENT = NativeConvert.FromErrno(Errno.ENOENT);
    public static readonly int EBADF = NativeConvert.FromErrno(Errno.EBADF);

    /// <summary>True for "try again once the socket is ready" (EAGAIN/EWOULDBLOCK, EINTR).</summary>
    public static bool IsRetry(int errno) => errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;

    /// <summary>True for "the peer is gone" (EPIPE, ECONNRESET).</summary>
    public static bool IsConnectionLost(int errno) => errno == EPIPE || errno == ECONNRESET;

    /// <summary>strerror(3) text for <paramref name="errno"/>.</summary>
    public static string Describe(int errno) => $"{Marshal.GetPInvokeErrorMessage(errno)} (errno {errno})";
}
