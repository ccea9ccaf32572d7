using Vmm.Core.Posix;

namespace Vmm.Core.Events;

/// <summary>
/// An eventfd(2) counter: the kick and call notifications of virtio queues, shareable with
/// another process. <see cref="Wait()"/> blocks a dedicated thread (the fastest wake-up
/// measured on these machines, STACK.md section 4); <see cref="Dispose"/> wakes it.
/// </summary>
/// <remarks>
/// A peer may set O_NONBLOCK on the shared open file (qemu-storage-daemon does),
/// so every read tolerates EAGAIN and then waits with poll(2).
/// </remarks>
public sealed unsafe partial class EventFd : IDisposable
{
    private readonly SafeFileDescriptor _fd;
    private volatile bool _disposed;
    private int _waiters;

    public EventFd()
    {
        int fd = Interop.Libc.EventFd(0, Interop.Libc.EFD_CLOEXEC);
        if (fd < 0)
        {
            throw PosixException.FromLastError("eventfd");
        }

        _fd = new SafeFileDescriptor(fd);
    }

    /// <summary>Wraps an eventfd received from a peer (takes ownership).</summary>
    public EventFd(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        if (fd.IsInvalid)
        {
            throw new ArgumentException("Invalid file descriptor.", nameof(fd));
        }

        _fd = fd;
    }

    /// <summary>The descriptor, to pass to a peer (SCM_RIGHTS). Still owned by this object.</summary>
    public SafeFileDescriptor Handle => _fd;

    public bool IsDisposed => _disposed;

    /// <summary>Adds one to the counter, waking a waiter. Does nothing once disposed.</summary>
    public void Signal()
    {
        if (_disposed)
        {
            return;
        }

        bool added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            WriteCounter(_fd.DangerousFd, 1);
        }
        catch (ObjectDisposedException)
        {
            // Disposed between the check and the add-ref: a signal to a closed queue is moot.
        }
        finally
        {
            if (added)
            {
                _fd.DangerousRelease();
            }
        }
    }

    /// <summary>Blocks until signalled (returns true, counter consumed) or disposed (returns false).</summary>
    public bool Wait() => Wait(Timeout.Infinite);

    /// <summary>
    /// Blocks up to <paramref name="timeoutMilliseconds"/> (-1: forever). True when a signal was
    /// consumed; false on timeout or when disposed.
    /// </summary>
    public bool Wait(int timeoutMilliseconds)
    {
        bool added = false;
        Interlocked.Increment(ref _waiters);
        try
        {
            _fd.DangerousAddRef(ref added);
            int fd = _fd.DangerousFd;
            while (!_disposed)
            {
                if (!PollReadable(fd, timeoutMilliseconds))
                {
                    return false;
                }

                if (_disposed)
                {
                    return false;
                }

                if (TryReadCounter(fd, out _))
                {
                    return true;
                }
            }

            return false;
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            Interlocked.Decrement(ref _waiters);
            if (added)
            {
                _fd.DangerousRelease();
            }
        }
    }

    /// <summary>Consumes a pending signal without blocking; false when none is pending.</summary>
    public bool TryConsume() => TryConsume(out _);

    /// <summary>Consumes pending signals without blocking; <paramref name="count"/> is how many.</summary>
    public bool TryConsume(out ulong count)
    {
        count = 0;
        bool added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            int fd = _fd.DangerousFd;
            return PollReadable(fd, 0) && TryReadCounter(fd, out count);
        }
        catch (ObjectDisposedException)
        {
            return false;
        }
        finally
        {
            if (added)
            {
                _fd.DangerousRelease();
            }
        }
    }

    /// <summary>
    /// Wakes every waiter (they return false), then closes once no call is using the fd.
    /// The wake-up is a write to the counter, which a peer sharing the eventfd would also see;
    /// it is made only when a thread here is blocked on it, so closing a peer's eventfd that
    /// nobody waits on here (a back-end's call fd, say) never sends the peer a notification.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        bool added = false;
        try
        {
            _fd.DangerousAddRef(ref added);
            _disposed = true;
            if (Volatile.Read(ref _waiters) > 0)
            {
                WriteCounter(_fd.DangerousFd, 1);
            }
        }
        catch (ObjectDisposedException)
        {
            _disposed = true;
        }
        finally
        {
            if (added)
            {
                _fd.DangerousRelease();
            }
        }

        _fd.Dispose();
    }

    private static bool PollReadable(int fd, int timeoutMilliseconds)
    {
        var pfd = new Interop.Libc.PollFd { Fd = fd, Events = Interop.Libc.POLLIN };
        while (true)
        {
            int n = Interop.Libc.Poll(&pfd, 1, timeoutMilliseconds);
            if (n > 0)
            {
                return true;
            }

            if (n == 0)
            {
                return false;
            }

            int errno = Interop.LastErrno;
            if (errno != Interop.Errno.EINTR)
            {
                throw new PosixException("poll", errno);
            }
        }
    }

    private static bool TryReadCounter(int fd, out ulong value)
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

    private static void WriteCounter(int fd, ulong value)
    {
        while (true)
        {
            nint n = Interop.Libc.Write(fd, &value, sizeof(ulong));
            if (n == sizeof(ulong))
            {
                return;
            }

            int errno = Interop.LastErrno;
            if (n < 0 && errno == Interop.Errno.EINTR)
            {
                continue;
            }

            if (n < 0 && errno == Interop.Errno.EAGAIN)
            {
                // The counter is at its maximum (0xfffffffffffffffe): the reader is already due a wake-up.
                return;
            }

            throw new PosixException("write(eventfd)", n < 0 ? errno : Interop.Errno.EINVAL);
        }
    }
}
