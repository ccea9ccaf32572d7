namespace Vmm.Core.Posix;

/// <summary>
/// Anonymous pipes (pipe2(2), close-on-exec) and whole-stream reads and writes over them: the
/// channel vhost-user's SET_DEVICE_STATE_FD moves a back-end's state through. The pipe's other
/// end belongs to a peer, so every transfer has a deadline and can be cancelled: a peer that
/// keeps its end open and never reads (or never writes, or never closes) costs a thread for
/// that long at most, never forever.
/// </summary>
public static class Pipe
{
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

    /// <summary>Writes all of <paramref name="data"/>, with no deadline.</summary>
    public static void WriteAll(SafeFileDescriptor fd, ReadOnlySpan<byte> data) =>
        WriteAll(fd, data, Timeout.InfiniteTimeSpan, CancellationToken.None);

    /// <summary>
    /// Writes all of <paramref name="data"/> to <paramref name="fd"/>, waiting while the reader is
    /// behind, for <paramref name="timeout"/> at most (<see cref="TimeoutException"/>) or until
    /// <paramref name="cancellationToken"/> fires (<see cref="OperationCanceledException"/>).
    /// <see cref="PosixException"/> when the write fails (EPIPE when the reader is gone).
    /// The descriptor is made non-blocking.
    /// </summary>
    public static unsafe void WriteAll(SafeFileDescriptor fd, ReadOnlySpan<byte> data, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(fd);
        FileDescriptors.SetNonBlocking(fd);
        using var wait = new Waiter(fd, Interop.Libc.POLLOUT, timeout, cancellationToken);
        fixed (byte* start = data)
        {
            int done = 0;
            while (done < data.Length)
            {
                nint n;
                using (FdLease lease = fd.Lease())
                {
                    n = Interop.Libc.Write(lease.Fd, start + done, (nuint)(data.Length - done));
                }

                if (n >= 0)
                {
                    done += (int)n;
                    continue;
                }

                int errno = Interop.LastErrno;
                if (errno == Interop.Errno.EAGAIN)
                {
                    wait.Wait("write");
                }
                else if (errno != Interop.Errno.EINTR)
                {
                    throw new PosixException("write", errno);
                }
            }
        }
    }

    /// <summary>Reads <paramref name="fd"/> until end of file, with no deadline.</summary>
    public static byte[] ReadToEnd(SafeFileDescriptor fd, int maxBytes) =>
        ReadToEnd(fd, maxBytes, Timeout.InfiniteTimeSpan, CancellationToken.None);

    /// <summary>
    /// Reads <paramref name="fd"/> until end of file, for <paramref name="timeout"/> at most
    /// (<see cref="TimeoutException"/>) or until <paramref name="cancellationToken"/> fires
    /// (<see cref="OperationCanceledException"/>). More than <paramref name="maxBytes"/> bytes is
    /// an <see cref="InvalidDataException"/>: the buffer never grows past the limit. The
    /// descriptor is made non-blocking.
    /// </summary>
    public static unsafe byte[] ReadToEnd(SafeFileDescriptor fd, int maxBytes, TimeSpan timeout, CancellationToken cancellationToken)
    {
        ArgumentNullException.ThrowIfNull(fd);
        ArgumentOutOfRangeException.ThrowIfNegative(maxBytes);
        FileDescriptors.SetNonBlocking(fd);
        using var wait = new Waiter(fd, Interop.Libc.POLLIN, timeout, cancellationToken);
        using var buffer = new MemoryStream();
        byte[] chunk = new byte[64 * 1024];
        fixed (byte* c = chunk)
        {
            while (true)
            {
                nint n;
                using (FdLease lease = fd.Lease())
                {
                    n = Interop.Libc.Read(lease.Fd, c, (nuint)chunk.Length);
                }

                if (n == 0)
                {
                    return buffer.ToArray();
                }

                if (n > 0)
                {
                    if (buffer.Length + n > maxBytes)
                    {
                        throw new InvalidDataException($"The stream holds more than {maxBytes} bytes.");
                    }

                    buffer.Write(chunk, 0, (int)n);
                    continue;
                }

                int errno = Interop.LastErrno;
                if (errno == Interop.Errno.EAGAIN)
                {
                    wait.Wait("read");
                }
                else if (errno != Interop.Errno.EINTR)
                {
                    throw new PosixException("read", errno);
                }
            }
        }
    }

    /// <summary>
    /// poll(2) on the pipe and on an eventfd that the cancellation token signals, against one
    /// deadline for the whole transfer.
    /// </summary>
    private sealed unsafe class Waiter : IDisposable
    {
        private readonly SafeFileDescriptor _fd;
        private readonly short _events;
        private readonly long _deadline;
        private readonly TimeSpan _timeout;
        private readonly CancellationToken _cancellationToken;
        private readonly SafeFileDescriptor _wake;
        private readonly CancellationTokenRegistration _registration;

        public Waiter(SafeFileDescriptor fd, short events, TimeSpan timeout, CancellationToken cancellationToken)
        {
            _fd = fd;
            _events = events;
            _timeout = timeout;
            _deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)timeout.TotalMilliseconds;
            _cancellationToken = cancellationToken;
            _wake = EventCounter.Create();
            _registration = cancellationToken.Register(static state => EventCounter.Add((SafeFileDescriptor)state!, 1, out _), _wake);
        }

        public void Wait(string call)
        {
            Interop.Libc.PollFd* fds = stackalloc Interop.Libc.PollFd[2];
            while (true)
            {
                _cancellationToken.ThrowIfCancellationRequested();
                long remaining = _deadline == long.MaxValue ? -1 : _deadline - Environment.TickCount64;
                if (_deadline != long.MaxValue && remaining <= 0)
                {
                    throw new TimeoutException($"The pipe {call} did not complete within {_timeout.TotalSeconds:0.###} s.");
                }

                int n;
                using (FdLease pipe = _fd.Lease())
                using (FdLease wake = _wake.Lease())
                {
                    fds[0] = new Interop.Libc.PollFd { Fd = pipe.Fd, Events = _events };
                    fds[1] = new Interop.Libc.PollFd { Fd = wake.Fd, Events = Interop.Libc.POLLIN };
                    n = EventCounter.Poll(fds, 2, (int)Math.Min(remaining, int.MaxValue));
                    if (n > 0 && fds[0].ReturnedEvents != 0)
                    {
                        // Ready, or POLLHUP / POLLERR: the read or write that follows says which.
                        return;
                    }
                }
            }
        }

        public void Dispose()
        {
            // Waits for a running callback, so the eventfd is never written after it is closed.
            _registration.Dispose();
            _wake.Dispose();
        }
    }
}
