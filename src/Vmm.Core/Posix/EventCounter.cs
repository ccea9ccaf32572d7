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
        return TryRead(lease.Fd, out value);
    }

    /// <summary>
    /// As <see cref="TryRead(SafeFileDescriptor, out ulong)"/> on a descriptor number the caller
    /// keeps valid by a reference of its own (the notifier loop's registrations hold one).
    /// </summary>
    public static bool TryRead(int fd, out ulong value)
    {
        ulong v = 0;
        while (true)
        {
            nint n = Interop.Libc.Read(fd, &v, sizeof(ulong));
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
    /// Waits until one of up to three descriptors is readable: bit 0 of the result for
    /// <paramref name="first"/>, bit 1 for <paramref name="second"/>, bit 2 for
    /// <paramref name="third"/>, 0 on timeout. A null descriptor is not watched.
    /// </summary>
    public static int WaitReadable(SafeFileDescriptor? first, SafeFileDescriptor second, SafeFileDescriptor? third, int timeoutMilliseconds)
    {
        bool addedFirst = false;
        bool addedSecond = false;
        bool addedThird = false;
        try
        {
            first?.DangerousAddRef(ref addedFirst);
            second.DangerousAddRef(ref addedSecond);
            third?.DangerousAddRef(ref addedThird);
            Interop.Libc.PollFd* fds = stackalloc Interop.Libc.PollFd[3];

            // An absent descriptor is -1, which poll(2) ignores.
            fds[0] = new Interop.Libc.PollFd { Fd = first?.DangerousFd ?? -1, Events = Interop.Libc.POLLIN };
            fds[1] = new Interop.Libc.PollFd { Fd = second.DangerousFd, Events = Interop.Libc.POLLIN };
            fds[2] = new Interop.Libc.PollFd { Fd = third?.DangerousFd ?? -1, Events = Interop.Libc.POLLIN };
            if (Poll(fds, 3, timeoutMilliseconds) == 0)
            {
                return 0;
            }

            return (fds[0].ReturnedEvents != 0 ? 1 : 0) | (fds[1].ReturnedEvents != 0 ? 2 : 0) | (fds[2].ReturnedEvents != 0 ? 4 : 0);
        }
        finally
        {
            if (addedFirst)
            {
                first!.DangerousRelease();
            }

            if (addedSecond)
            {
                second.DangerousRelease();
            }

            if (addedThird)
            {
                third!.DangerousRelease();
            }
        }
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
