using System.Net.Sockets;
using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vmm.Core.Posix.Sockets;

/// <summary>
/// sendmsg(2)/recvmsg(2) with SCM_RIGHTS ancillary data (unix(7)) on a BCL <see cref="Socket"/>,
/// which cannot pass fds itself (dotnet/runtime#932). Both calls are non-blocking
/// (MSG_DONTWAIT): the BCL puts the fd in O_NONBLOCK mode at its first async operation anyway,
/// and callers wait for readiness through the Socket's own async machinery.
/// Results are the byte count (&gt;= 0) or <c>-errno</c>; errno values are in <see cref="PosixErrors"/>.
/// </summary>
/// <remarks>
/// Mono.Posix.NETStandard 1.0.0 has everything needed here: MessageFlags carries
/// MSG_DONTWAIT, MSG_NOSIGNAL and MSG_CMSG_CLOEXEC, and <see cref="Msghdr.msg_flags"/> is
/// copied back after recvmsg so MSG_CTRUNC is visible. Its Msghdr marshals through managed
/// arrays (one small allocation per call), which is fine on the control plane.
/// </remarks>
public static class FdPassing
{
    /// <summary>SCM_MAX_FD in the Linux kernel (include/net/scm.h): the most fds one sendmsg may carry.</summary>
    public const int SCM_MAX_FD = 253;

    private const MessageFlags SendFlags = MessageFlags.MSG_DONTWAIT | MessageFlags.MSG_NOSIGNAL;
    private const MessageFlags ReceiveFlags = MessageFlags.MSG_DONTWAIT | MessageFlags.MSG_CMSG_CLOEXEC;

    /// <summary>
    /// One non-blocking sendmsg of <paramref name="data"/> with <paramref name="fds"/> attached
    /// as SCM_RIGHTS. The kernel attaches the fds to the first byte sent, so a short write still
    /// delivered all of them; send the remainder without fds. MSG_NOSIGNAL turns a closed peer
    /// into EPIPE instead of SIGPIPE.
    /// </summary>
    /// <returns>Bytes sent, or -errno (EAGAIN: nothing was sent, the fds were not passed).</returns>
    public static unsafe nint TrySend(Socket socket, ReadOnlySpan<byte> data, ReadOnlySpan<SafeHandle> fds)
    {
        ArgumentNullException.ThrowIfNull(socket);
        if (fds.Length > SCM_MAX_FD)
        {
            throw new ArgumentException($"At most {SCM_MAX_FD} fds can be passed in one sendmsg.", nameof(fds));
        }

        if (data.IsEmpty && !fds.IsEmpty)
        {
            // unix(7): ancillary data on a stream socket needs at least one byte of real data.
            throw new ArgumentException("Fds must be sent with at least one byte of data.", nameof(data));
        }

        Span<bool> fdAdded = stackalloc bool[fds.Length];
        SafeHandle socketHandle = socket.SafeHandle;
        bool socketAdded = false;
        try
        {
            socketHandle.DangerousAddRef(ref socketAdded);
            var msg = new Msghdr();
            if (!fds.IsEmpty)
            {
                ulong payloadLength = (ulong)(fds.Length * sizeof(int));
                msg.msg_control = new byte[Syscall.CMSG_SPACE(payloadLength)];
                msg.msg_controllen = msg.msg_control.Length;
                var cmsg = new Cmsghdr
                {
                    cmsg_len = (long)Syscall.CMSG_LEN(payloadLength),
                    cmsg_level = UnixSocketProtocol.SOL_SOCKET,
                    cmsg_type = UnixSocketControlMessage.SCM_RIGHTS,
                };
                long offset = Syscall.CMSG_FIRSTHDR(msg);
                cmsg.WriteToBuffer(msg, offset);
                Span<byte> fdData = msg.msg_control.AsSpan((int)Syscall.CMSG_DATA(msg, offset));
                for (int i = 0; i < fds.Length; i++)
                {
                    SafeHandle fd = fds[i] ?? throw new ArgumentNullException(nameof(fds), $"fds[{i}] is null.");
                    if (fd.IsInvalid)
                    {
                        throw new ArgumentException($"fds[{i}] is not a valid descriptor.", nameof(fds));
                    }

                    // Held until sendmsg returns: a concurrent Dispose cannot close (and the
                    // process reuse) the number while the kernel is duplicating it.
                    fd.DangerousAddRef(ref fdAdded[i]);
                    MemoryMarshal.Write(fdData[(i * sizeof(int))..], (int)fd.DangerousGetHandle());
                }
            }

            fixed (byte* p = data)
            {
                msg.msg_iov = [new Iovec { iov_base = (IntPtr)p, iov_len = (ulong)data.Length }];
                msg.msg_iovlen = 1;
                long n = Syscall.sendmsg((int)socketHandle.DangerousGetHandle(), msg, SendFlags);
                return n >= 0 ? (nint)n : -Marshal.GetLastPInvokeError();
            }
        }
        finally
        {
            for (int i = 0; i < fdAdded.Length; i++)
            {
                if (fdAdded[i])
                {
                    fds[i].DangerousRelease();
                }
            }

            if (socketAdded)
            {
                socketHandle.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// One non-blocking recvmsg into <paramref name="buffer"/> with MSG_CMSG_CLOEXEC. Received
    /// fds are wrapped in <see cref="SafeFileDescriptor"/>s at once and appended to
    /// <paramref name="receivedFds"/>. If the kernel truncated the control data (MSG_CTRUNC: it
    /// dropped fds) or more than <paramref name="maxFds"/> arrived, every fd of this call is
    /// closed, none is appended, and <paramref name="controlTruncated"/> is true; the data bytes
    /// were still consumed and the result counts them.
    /// </summary>
    /// <returns>Bytes received (0 = EOF), or -errno.</returns>
    public static unsafe nint TryReceive(
        Socket socket, Span<byte> buffer, List<SafeFileDescriptor> receivedFds, int maxFds, out bool controlTruncated)
    {
        ArgumentNullException.ThrowIfNull(socket);
        ArgumentNullException.ThrowIfNull(receivedFds);
        ArgumentOutOfRangeException.ThrowIfNegative(maxFds);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(maxFds, SCM_MAX_FD);
        controlTruncated = false;

        // Room for maxFds (at least one, so that an unexpected fd is seen and closed here
        // rather than only flagged); the count check below catches alignment slack.
        var msg = new Msghdr { msg_control = new byte[Syscall.CMSG_SPACE((ulong)(Math.Max(maxFds, 1) * sizeof(int)))] };
        msg.msg_controllen = msg.msg_control.Length;

        SafeHandle socketHandle = socket.SafeHandle;
        bool socketAdded = false;
        long n;
        try
        {
            socketHandle.DangerousAddRef(ref socketAdded);
            fixed (byte* p = buffer)
            {
                msg.msg_iov = [new Iovec { iov_base = (IntPtr)p, iov_len = (ulong)buffer.Length }];
                msg.msg_iovlen = 1;
                n = Syscall.recvmsg((int)socketHandle.DangerousGetHandle(), msg, ReceiveFlags);
                if (n < 0)
                {
                    return -Marshal.GetLastPInvokeError();
                }
            }
        }
        finally
        {
            if (socketAdded)
            {
                socketHandle.DangerousRelease();
            }
        }

        var fds = new List<SafeFileDescriptor>();
        try
        {
            for (long offset = Syscall.CMSG_FIRSTHDR(msg); offset != -1; offset = Syscall.CMSG_NXTHDR(msg, offset))
            {
                var cmsg = Cmsghdr.ReadFromBuffer(msg, offset);
                if (cmsg.cmsg_level != UnixSocketProtocol.SOL_SOCKET || cmsg.cmsg_type != UnixSocketControlMessage.SCM_RIGHTS)
                {
                    continue;
                }

                int count = (int)((cmsg.cmsg_len - (long)Syscall.CMSG_LEN(0)) / sizeof(int));
                ReadOnlySpan<byte> fdData = msg.msg_control.AsSpan((int)Syscall.CMSG_DATA(msg, offset), count * sizeof(int));
                for (int i = 0; i < count; i++)
                {
                    fds.Add(new SafeFileDescriptor(MemoryMarshal.Read<int>(fdData[(i * sizeof(int))..])));
                }
            }
        }
        catch
        {
            CloseAll(fds);
            throw;
        }

        if ((msg.msg_flags & MessageFlags.MSG_CTRUNC) != 0 || fds.Count > maxFds)
        {
            // Tmds.DBus and openvmm socket.rs: fds the caller did not ask for are closed, and a
            // truncated set is useless (which fd is missing is unknown), so close it all.
            controlTruncated = true;
            CloseAll(fds);
        }
        else
        {
            receivedFds.AddRange(fds);
        }

        return (nint)n;
    }

    private static void CloseAll(List<SafeFileDescriptor> fds)
    {
        foreach (SafeFileDescriptor fd in fds)
        {
            fd.Dispose();
        }

        fds.Clear();
    }
}
