namespace Vmm.Core.Events;

/// <summary>Why a wait for a queue's events ended.</summary>
public enum QueueWake
{
    /// <summary>The driver notified the queue (its kick eventfd).</summary>
    Kick,

    /// <summary>Requests in flight finished and can be reaped.</summary>
    Completions,

    /// <summary>The queue's stop event was signalled.</summary>
    Stop,

    /// <summary>The kick or stop eventfd was disposed: nothing more will come.</summary>
    Closed,

    /// <summary>The timeout passed (a queue that polls without a kick).</summary>
    Timeout,
}

public sealed partial class EventFd
{
    /// <summary>
    /// Counts a waiter that watches this eventfd by other means than <see cref="Wait()"/> (an
    /// io_uring poll): <see cref="Dispose"/> then writes to the counter, which wakes that watch too,
    /// and the watcher sees <see cref="IsDisposed"/>. Pair with <see cref="EndWatch"/>.
    /// </summary>
    internal void BeginWatch() => Interlocked.Increment(ref _waiters);

    internal void EndWatch() => Interlocked.Decrement(ref _waiters);
}
