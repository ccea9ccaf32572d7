namespace Vmm.Core.Posix;

/// <summary>
/// Anonymous pipes (pipe2(2), close-on-exec) and blocking whole-stream reads and writes over
/// them: the channel vhost-user's SET_DEVICE_STATE_FD moves a back-end's state through.
/// </summary>
public static class Pipe
{
    private const int EINTR = 4;

    /// <summary>A new pipe: the read end and the write end, each in its own handle.</summary>
    public static unsafe (SafeFileDescriptor Read, SafeFileDescriptor Write) Create()
    {
        int* fds = stackalloc int[2];
        if (Interop.Libc.Pipe2(fds, Interop.Libc.O_CLOEXEC) != 0)
        {
            throw PosixException.FromLastError("pipe2");
        }

        return (new SafeFileDescriptor(fds[0]), new SafeFileDescriptor(fds[1]));
    }

    /// <summary>
    /// Writes all of <paramref name="data"/> to <paramref name="fd"/>, blocking while the
    /// reader is behind. Throws <see cref="PosixException"/> (EPIPE when the reader is gone).
    /// </summary>
    public static unsafe void WriteAll(SafeFileDescriptor fd, ReadOnlySpan<byte> data)
    {
        ArgumentNullException.ThrowIfNull(fd);
        using FdLease lease = fd.Lease();
        fixed (byte* start = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n = Interop.Libc.Write(lease.Fd, start + done, (nuint)(data.Length - done));
                if (n < 0)
                {
                    int errno = Interop.LastErrno;
                    if (errno == EINTR)
                    {
                        continue;
                    }

                    throw new PosixException("write", errno);
                }

                done += (int)n;
            }
        }
    }

    /// <summary>
    /// Reads <paramref name="fd"/> until end of file. More than <paramref name="maxBytes"/>
    /// bytes is an <see cref="InvalidDataException"/>: the buffer never grows past the limit.
    /// </summary>
    public static unsafe byte[] ReadToEnd(SafeFileDescriptor fd, int maxBytes)
    {
        ArgumentNullException.ThrowIfNull(fd);
        ArgumentOutOfRangeException.ThrowIfNegative(maxBytes);
        using FdLease lease = fd.Lease();
        using var buffer = new MemoryStream();
        byte[] chunk = new byte[64 * 1024];
        fixed (byte* c = chunk)
        {
            while (true)
            {
                nint n = Interop.Libc.Read(lease.Fd, c, (nuint)chunk.Length);
                if (n < 0)
                {
                    int errno = Interop.LastErrno;
                    if (errno == EINTR)
                    {
                        continue;
                    }

                    throw new PosixException("read", errno);
                }

                if (n == 0)
                {
                    return buffer.ToArray();
                }

                if (buffer.Length + n > maxBytes)
                {
                    throw new InvalidDataException($"The stream holds more than {maxBytes} bytes.");
                }

                buffer.Write(chunk, 0, (int)n);
            }
        }
    }
}
