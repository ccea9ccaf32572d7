namespace Vmm.Core.Posix;

/// <summary>
/// epoll(7) for the VM's notifier loop: an instance in a SafeHandle, registrations by fd with a
/// 64-bit key, and waits into a caller's event buffer (<see cref="EventBufferSize"/>).
/// </summary>
internal static unsafe class Epoll
{
    /// <summary>Bytes of event buffer <see cref="Wait"/> needs per event (the layout differs by architecture).</summary>
    public static int EventSize => Interop.Libc.EpollEvent.Size;

    /// <summary>Bytes of event buffer for <paramref name="maxEvents"/> events.</summary>
    public static int EventBufferSize(int maxEvents) => maxEvents * EventSize;

    /// <summary>A new epoll instance, close-on-exec (vmm run starts child processes).</summary>
    public static SafeFileDescriptor Create()
    {
        int epfd = Interop.Libc.EpollCreate1(Interop.Libc.EPOLL_CLOEXEC);
        return epfd < 0 ? throw PosixException.FromLastError("epoll_create1") : new SafeFileDescriptor(epfd);
    }

    /// <summary>Watches <paramref name="fd"/> for readability, reported with <paramref name="key"/>.</summary>
    /// <exception cref="PosixException">epoll_ctl failed (EEXIST: <paramref name="fd"/> is already watched).</exception>
    public static void AddReadable(SafeFileDescriptor epoll, int fd, ulong key)
    {
        byte* ev = stackalloc byte[16];
        Interop.Libc.EpollEvent.Write(ev, Interop.Libc.EPOLLIN, key);
        using FdLease lease = epoll.Lease();
        if (Interop.Libc.EpollCtl(lease.Fd, Interop.Libc.EPOLL_CTL_ADD, fd, ev) != 0)
        {
            throw PosixException.FromLastError("epoll_ctl(EPOLL_CTL_ADD)");
        }
    }

    /// <summary>Stops watching <paramref name="fd"/>; nothing happens when it was not watched or the instance is closed.</summary>
    public static void Remove(SafeFileDescriptor epoll, int fd)
    {
        bool added = false;
        try
        {
            epoll.DangerousAddRef(ref added);
            _ = Interop.Libc.EpollCtl(epoll.DangerousFd, Interop.Libc.EPOLL_CTL_DEL, fd, null);
        }
        catch (ObjectDisposedException)
        {
            // The instance is closed: every registration in it is gone with it.
        }
        finally
        {
            if (added)
            {
                epoll.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Waits (forever) until at least one watched fd is ready; returns how many events were
    /// written to <paramref name="events"/> (room for <paramref name="maxEvents"/>). EINTR waits again.
    /// </summary>
    public static int Wait(int epfd, byte* events, int maxEvents)
    {
        while (true)
        {
            int n = Interop.Libc.EpollWait(epfd, events, maxEvents, -1);
            if (n >= 0)
            {
                return n;
            }

            int errno = Interop.LastErrno;
            if (errno != Interop.Errno.EINTR)
            {
                throw new PosixException("epoll_wait", errno);
            }
        }
    }

    /// <summary>The key of event <paramref name="index"/> in a buffer <see cref="Wait"/> filled.</summary>
    public static ulong KeyOf(byte* events, int index) => Interop.Libc.EpollEvent.ReadData(events, index);
}
