namespace Vmm.Core.Posix;

/// <summary>How a write to an eventfd ended.</summary>
internal enum EventCounterAdd
{
    /// <summary>The counter was increased.</summary>
    Added,

    /// <summary>
    /// The counter is at its maximum (0xfffffffffffffffe, eventfd(2)): the reader has not read
    /// since, so it is already due a wake-up and this one is not needed.
    /// </summary>
    Saturated,

    /// <summary>The write failed (the errno says why): not an eventfd, or closed under us.</summary>
    Failed,
}

/// <summary>
/// The eventfd(2) system calls behind <see cref="Events.EventFd"/>: create (always close-on-exec
/// and non-blocking), add, read, and poll(2) for readability. A non-blocking descriptor is what
/// guarantees no thread here ever blocks on a counter a peer shares: a full counter answers
/// EAGAIN instead of blocking the writer, and a counter another reader drained answers EAGAIN
/// instead of blocking the reader (both poll first).
/// </summary>
internal static unsafe class EventCounter
{
    public static SafeFileDescriptor Create()
    {
        int fd = Interop.Libc.EventFd(0, Interop.Libc.EFD_CLOEXEC | Interop.Libc.EFD_NONBLOCK);
        return fd < 0 ? throw PosixException.FromLastError("eventfd") : new SafeFileDescriptor(fd);
    }

    public static EventCounterAdd Add(SafeFileDescriptor fd, ulong value, out int errno)
    {
        using FdLease lease = fd.Lease();
        while (true)
        {
            nint n = Interop.Libc.Write(lease.Fd, &value, sizeof(ulong));
            if (n == sizeof(ulong))
            {
                errno = 0;
                return EventCounterAdd.Added;
            }

            errno = n < 0 ? Interop.LastErrno : Interop.Errno.EINVAL;
            if (n < 0 && errno == Interop.Errno.EINTR)
            {
                continue;
            }

            return n < 0 && errno == Interop.Errno.EAGAIN ? EventCounterAdd.Saturated : EventCounterAdd.Failed;
        }
    }

    /// <summary>Reads (and so resets) the counter; false when it was zero (EAGAIN).</summary>
    public static bool TryRead(SafeFileDescriptor fd, out ulong value)
    {
        using FdLease lease = fd.Lease();
        ulong v = 0;
        while (true)
        {
            nint n = Interop.Libc.Read(lease.Fd, &v, sizeof(ulong));
            if (n == sizeof(ulong))
            {
                value = v;
                return true;
            }

            int errno = Interop.LastErrno;
            if (n < 0 && errno == Interop.Errno.EINTR)
            {
                continue;
            }

            value = 0;
            if (n < 0 && errno == Interop.Errno.EAGAIN)
            {
                // Another reader took it first, or the counter was already drained.
                return false;
            }

            throw new PosixException("read(eventfd)", n < 0 ? errno : Interop.Errno.EINVAL);
        }
    }

    /// <summary>Waits until <paramref name="fd"/> is readable; false on timeout (-1: none).</summary>
    public static bool WaitReadable(SafeFileDescriptor fd, int timeoutMilliseconds)
    {
        using FdLease lease = fd.Lease();
        var pfd = new Interop.Libc.PollFd { Fd = lease.Fd, Events = Interop.Libc.POLLIN };
        return Poll(&pfd, 1, timeoutMilliseconds) > 0;
    }

    /// <summary>
    /// Waits until <paramref name="first"/> or <paramref name="second"/> is readable: bit 0 of the
    /// result for the first, bit 1 for the second, 0 on timeout.
    /// </summary>
    public static int WaitReadable(SafeFileDescriptor first, SafeFileDescriptor second, int timeoutMilliseconds)
    {
        using FdLease a = first.Lease();
        using FdLease b = second.Lease();
        Interop.Libc.PollFd* fds = stackalloc Interop.Libc.PollFd[2];
        fds[0] = new Interop.Libc.PollFd { Fd = a.Fd, Events = Interop.Libc.POLLIN };
        fds[1] = new Interop.Libc.PollFd { Fd = b.Fd, Events = Interop.Libc.POLLIN };
        if (Poll(fds, 2, timeoutMilliseconds) == 0)
        {
            return 0;
        }

        return (fds[0].ReturnedEvents != 0 ? 1 : 0) | (fds[1].ReturnedEvents != 0 ? 2 : 0);
    }

    /// <summary>poll(2), retried on EINTR; the number of ready descriptors, 0 on timeout.</summary>
    internal static int Poll(Interop.Libc.PollFd* fds, nuint count, int timeoutMilliseconds)
    {
        while (true)
        {
            int n = Interop.Libc.Poll(fds, count, timeoutMilliseconds);
            if (n >= 0)
            {
                return n;
            }

            int errno = Interop.LastErrno;
            if (errno != Interop.Errno.EINTR)
            {
                throw new PosixException("poll", errno);
            }
        }
    }
}
