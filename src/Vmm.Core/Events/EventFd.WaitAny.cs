using Vmm.Core.Posix;

namespace Vmm.Core.Events;

public sealed unsafe partial class EventFd
{
    /// <summary>
    /// Blocks until <paramref name="first"/> or <paramref name="second"/> is signalled and consumes
    /// that signal: returns 0 or 1 for which one, -1 on timeout or when either was disposed.
    /// A queue worker waits on its kick and on its own stop event this way.
    /// </summary>
    public static int WaitAny(EventFd first, EventFd second, int timeoutMilliseconds = Timeout.Infinite) =>
        WaitAny(first, second, null, timeoutMilliseconds);

    /// <summary>
    /// As <see cref="WaitAny(EventFd, EventFd, int)"/>, and also returns 2, consuming nothing, when
    /// <paramref name="readable"/> polls readable: a queue worker with I/O in flight waits on its
    /// kick, its stop event and the I/O engine's completion descriptor at once.
    /// <paramref name="first"/> may be null (a queue without kicks): then only the others are watched.
    /// </summary>
    public static int WaitAny(EventFd? first, EventFd second, SafeFileDescriptor? readable, int timeoutMilliseconds = Timeout.Infinite)
    {
        ArgumentNullException.ThrowIfNull(second);
        bool addedFirst = false;
        bool addedSecond = false;
        bool addedReadable = false;
        if (first is not null)
        {
            Interlocked.Increment(ref first._waiters);
        }

        Interlocked.Increment(ref second._waiters);
        try
        {
            first?._fd.DangerousAddRef(ref addedFirst);
            second._fd.DangerousAddRef(ref addedSecond);
            readable?.DangerousAddRef(ref addedReadable);
            Interop.Libc.PollFd* fds = stackalloc Interop.Libc.PollFd[3];
            while ((first is null || !first._disposed) && !second._disposed)
            {
                // Slots: 0 stop (second), 1 kick (first), 2 readable; absent ones get fd -1, which poll ignores.
                fds[0] = new Interop.Libc.PollFd { Fd = second._fd.DangerousFd, Events = Interop.Libc.POLLIN };
                fds[1] = new Interop.Libc.PollFd { Fd = first is null ? -1 : first._fd.DangerousFd, Events = Interop.Libc.POLLIN };
                fds[2] = new Interop.Libc.PollFd { Fd = readable is null ? -1 : readable.DangerousFd, Events = Interop.Libc.POLLIN };
                int n = Interop.Libc.Poll(fds, 3, timeoutMilliseconds);
                if (n == 0)
                {
                    return -1;
                }

                if (n < 0)
                {
                    int errno = Interop.LastErrno;
                    if (errno == Interop.Errno.EINTR)
                    {
                        continue;
                    }

                    throw new PosixException("poll", errno);
                }

                if ((first is not null && first._disposed) || second._disposed)
                {
                    return -1;
                }

                // The second (a stop request) wins a tie, so a worker stops promptly under load.
                if (fds[0].ReturnedEvents != 0 && TryReadCounter(fds[0].Fd, out _))
                {
                    return 1;
                }

                if (fds[1].ReturnedEvents != 0 && TryReadCounter(fds[1].Fd, out _))
                {
                    return 0;
                }

                if (fds[2].ReturnedEvents != 0)
                {
                    return 2;
                }
            }

            return -1;
        }
        catch (ObjectDisposedException)
        {
            return -1;
        }
        finally
        {
            if (first is not null)
            {
                Interlocked.Decrement(ref first._waiters);
            }

            Interlocked.Decrement(ref second._waiters);
            if (addedFirst)
            {
                first!._fd.DangerousRelease();
            }

            if (addedSecond)
            {
                second._fd.DangerousRelease();
            }

            if (addedReadable)
            {
                readable!.DangerousRelease();
            }
        }
    }
}
