using Vmm.Core.Posix;

namespace Vmm.Core.Events;

public sealed unsafe partial class EventFd
{
    /// <summary>
    /// Blocks until <paramref name="first"/> or <paramref name="second"/> is signalled and consumes
    /// that signal: returns 0 or 1 for which one, -1 on timeout or when either was disposed.
    /// A queue worker waits on its kick and on its own stop event this way.
    /// </summary>
    public static int WaitAny(EventFd first, EventFd second, int timeoutMilliseconds = Timeout.Infinite)
    {
        bool addedFirst = false;
        bool addedSecond = false;
        Interlocked.Increment(ref first._waiters);
        Interlocked.Increment(ref second._waiters);
        try
        {
            first._fd.DangerousAddRef(ref addedFirst);
            second._fd.DangerousAddRef(ref addedSecond);
            Interop.Libc.PollFd* fds = stackalloc Interop.Libc.PollFd[2];
            while (!first._disposed && !second._disposed)
            {
                fds[0] = new Interop.Libc.PollFd { Fd = first._fd.DangerousFd, Events = Interop.Libc.POLLIN };
                fds[1] = new Interop.Libc.PollFd { Fd = second._fd.DangerousFd, Events = Interop.Libc.POLLIN };
                int n = Interop.Libc.Poll(fds, 2, timeoutMilliseconds);
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

                if (first._disposed || second._disposed)
                {
                    return -1;
                }

                // The second (a stop request) wins a tie, so a worker stops promptly under load.
                if (fds[1].ReturnedEvents != 0 && TryReadCounter(fds[1].Fd, out _))
                {
                    return 1;
                }

                if (fds[0].ReturnedEvents != 0 && TryReadCounter(fds[0].Fd, out _))
                {
                    return 0;
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
            Interlocked.Decrement(ref first._waiters);
            Interlocked.Decrement(ref second._waiters);
            if (addedFirst)
            {
                first._fd.DangerousRelease();
            }

            if (addedSecond)
            {
                second._fd.DangerousRelease();
            }
        }
    }
}
