using Vmm.Core.Events;

namespace Vmm.Virtio.Driver;

/// <summary>
/// One queue of a device driven by <see cref="VirtioGuestDriver"/>: the ring (<see cref="Queue"/>),
/// its notification, and a wait that wakes on the queue's interrupt. The wrappers here serialise
/// submitters and the completer on <see cref="SyncRoot"/>, as <see cref="IDriverQueue"/> requires;
/// code that uses <see cref="Queue"/> directly takes that lock itself.
/// </summary>
public sealed class VirtioDriverQueue
{
    private readonly IDriverTransport _transport;
    private readonly EventFd _wake;
    private readonly EventFd _stop;

    internal VirtioDriverQueue(int index, IDriverQueue queue, IDriverTransport transport, EventFd wake, EventFd stop, int vector)
    {
        Index = index;
        Queue = queue;
        _transport = transport;
        _wake = wake;
        _stop = stop;
        Vector = vector;
    }

    public int Index { get; }

    public IDriverQueue Queue { get; }

    public object SyncRoot { get; } = new();

    /// <summary>The interrupt vector this queue's completions arrive on (shared by all queues on virtio-mmio).</summary>
    public int Vector { get; }

    /// <summary>Submits a chain (see <see cref="IDriverQueue.TrySubmit"/>); does not notify.</summary>
    public bool TrySubmit(ReadOnlySpan<DriverBuffer> buffers, object token)
    {
        lock (SyncRoot)
        {
            return Queue.TrySubmit(buffers, token);
        }
    }

    /// <summary>
    /// Writes the queue's notify register if the device asked for a kick (2.7.13 / 2.8.21: notify
    /// only when not suppressed). True when it wrote.
    /// </summary>
    public bool Notify()
    {
        lock (SyncRoot)
        {
            if (!Queue.NeedsKick())
            {
                return false;
            }
        }

        _transport.Notify(Index);
        return true;
    }

    public bool TryTakeUsed(out object? token, out uint bytesWritten)
    {
        lock (SyncRoot)
        {
            return Queue.TryTakeUsed(out token, out bytesWritten);
        }
    }

    /// <summary>The shared-interrupt handler found used buffers: wake this queue's wait.</summary>
    internal void WakeFromSharedInterrupt() => _wake.Signal();

    /// <summary>
    /// Blocks until this queue's interrupt arrives (true) or <paramref name="timeout"/> passes or the
    /// driver shuts down (false).
    /// </summary>
    public bool WaitForInterrupt(TimeSpan timeout)
    {
        int ms = timeout == Timeout.InfiniteTimeSpan ? Timeout.Infinite : (int)Math.Clamp(timeout.TotalMilliseconds, 0, int.MaxValue);
        return EventFd.WaitAny(_wake, _stop, ms) == 0;
    }

    /// <summary>
    /// Takes the next completion, sleeping on the queue's interrupt while there is none: the
    /// usual "enable interrupts, re-check, sleep" order (2.7.14), so a completion that lands between
    /// the check and the sleep is not missed. False on timeout or shutdown.
    /// </summary>
    public bool WaitForCompletion(TimeSpan timeout, out object? token, out uint bytesWritten)
    {
        long deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            lock (SyncRoot)
            {
                if (Queue.TryTakeUsed(out token, out bytesWritten))
                {
                    return true;
                }

                if (Queue.EnableInterrupts())
                {
                    continue;
                }
            }

            long left = deadline == long.MaxValue ? Timeout.Infinite : deadline - Environment.TickCount64;
            if (left < 0 || !WaitForInterrupt(left == Timeout.Infinite ? Timeout.InfiniteTimeSpan : TimeSpan.FromMilliseconds(left)))
            {
                lock (SyncRoot)
                {
                    return Queue.TryTakeUsed(out token, out bytesWritten);
                }
            }
        }
    }
}
