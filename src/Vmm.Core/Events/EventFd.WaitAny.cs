using Vmm.Core.Posix;

namespace Vmm.Core.Events;

public sealed partial class EventFd
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
        if (first is not null)
        {
            Interlocked.Increment(ref first._waiters);
        }

        Interlocked.Increment(ref second._waiters);
        try
        {
            while ((first is null || !first._disposed) && !second._disposed)
            {
                int ready = EventCounter.WaitReadable(first?._fd, second._fd, readable, timeoutMilliseconds);
                if (ready == 0 || (first is not null && first._disposed) || second._disposed)
                {
                    return -1;
                }

                // The second (a stop request) wins a tie, so a worker stops promptly under load.
                if ((ready & 2) != 0 && EventCounter.TryRead(second._fd, out _))
                {
                    return 1;
                }

                if ((ready & 1) != 0 && EventCounter.TryRead(first!._fd, out _))
                {
                    return 0;
                }

                if ((ready & 4) != 0)
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
        }
    }
}
