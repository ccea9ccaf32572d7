using Vmm.Core.Posix;

namespace Vmm.Core.Events;

/// <summary>
/// An eventfd(2) counter: the kick and call notifications of virtio queues, shareable with
/// another process. <see cref="Wait()"/> blocks a dedicated thread (the fastest wake-up
/// measured on these machines: a blocked thread woken by the kernel); <see cref="Dispose"/> wakes it.
/// </summary>
/// <remarks>
/// Every EventFd is non-blocking (O_NONBLOCK), our own and a peer's alike, so that no thread
/// here ever blocks on a counter a peer controls: a peer can saturate a counter
/// (0xfffffffffffffffe) so that a blocking write would wait for a read that never comes, or read
/// a shared counter between our poll and our read. A write to a saturated counter is dropped:
/// the reader is already due a wake-up. Waits poll first, then read, and poll again on EAGAIN.
/// The system calls themselves live in Vmm.Core.Posix.
/// </remarks>
public sealed partial class EventFd : IDisposable
{
    private readonly SafeFileDescriptor _fd;
    private volatile bool _disposed;
    private int _waiters;

    public EventFd()
    {
        _fd = EventCounter.Create();
    }

    /// <summary>
    /// Wraps an eventfd received from a peer and takes ownership of it, also when it throws.
    /// The descriptor must be an eventfd (a pipe, a file or a socket is an
    /// <see cref="ArgumentException"/> that names what it is); it is made non-blocking.
    /// </summary>
    public EventFd(SafeFileDescriptor fd)
    {
        ArgumentNullException.ThrowIfNull(fd);
        try
        {
            if (fd.IsInvalid)
            {
                throw new ArgumentException("Invalid file descriptor.", nameof(fd));
            }

            if (FileDescriptors.GetKind(fd) != FileKind.EventFd)
            {
                throw new ArgumentException($"The descriptor is {FileDescriptors.Describe(fd)}, not an eventfd.", nameof(fd));
            }

            FileDescriptors.SetNonBlocking(fd);
        }
        catch
        {
            fd.Dispose();
            throw;
        }

        _fd = fd;
    }

    /// <summary>The descriptor, to pass to a peer (SCM_RIGHTS). Still owned by this object.</summary>
    public SafeFileDescriptor Handle => _fd;

    public bool IsDisposed => _disposed;

    /// <summary>
    /// Adds one to the counter, waking a waiter. Does nothing once disposed, nor when the counter
    /// is saturated (a wake-up is already pending). Never blocks.
    /// </summary>
    /// <exception cref="PosixException">The write failed for another reason.</exception>
    public void Signal()
    {
        if (!TrySignal(out int errno))
        {
            throw new PosixException("write(eventfd)", errno);
        }
    }

    /// <summary>
    /// <see cref="Signal"/> without the exception: false, with the errno, when the write failed
    /// for a reason other than a saturated counter. Never blocks.
    /// </summary>
    public bool TrySignal(out int errno)
    {
        errno = 0;
        if (_disposed)
        {
            return true;
        }

        try
        {
            return EventCounter.Add(_fd, 1, out errno) != EventCounterAdd.Failed;
        }
        catch (ObjectDisposedException)
        {
            // Disposed between the check and the write: a signal to a closed queue is moot.
            return true;
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
        Interlocked.Increment(ref _waiters);
        try
        {
            while (!_disposed)
            {
                if (!EventCounter.WaitReadable(_fd, timeoutMilliseconds) || _disposed)
                {
                    return false;
                }

                if (EventCounter.TryRead(_fd, out _))
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
        }
    }

    /// <summary>Consumes a pending signal without blocking; false when none is pending.</summary>
    public bool TryConsume() => TryConsume(out _);

    /// <summary>Consumes pending signals without blocking; <paramref name="count"/> is how many.</summary>
    public bool TryConsume(out ulong count)
    {
        count = 0;
        try
        {
            return EventCounter.TryRead(_fd, out count);
        }
        catch (ObjectDisposedException)
        {
            return false;
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

        _disposed = true;

        // Full fence: the flag must be visible before the waiter count is read, or a waiter
        // that just counted itself in and read the old flag would poll and never be woken.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _waiters) > 0)
        {
            try
            {
                EventCounter.Add(_fd, 1, out _);
            }
            catch (ObjectDisposedException)
            {
            }
        }

        _fd.Dispose();
    }
}
