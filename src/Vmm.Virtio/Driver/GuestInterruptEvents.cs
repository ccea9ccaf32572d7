using Vmm.Core.Events;
using Vmm.Core.Interrupts;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest driver's side of interrupt delivery: one eventfd per vector, which the driver's
/// completion and interrupt threads wait on. As an <see cref="IInterruptSink"/> it receives the
/// InterruptControllerActor's deliveries (function-backed lines) and signals the vector's eventfd;
/// with event-backed lines the same eventfd is the line itself, so a device or vhost-user
/// back-end wakes the driver with one eventfd write and nothing in between.
/// </summary>
public sealed class GuestInterruptEvents : IInterruptSink, IDisposable
{
    private readonly object _lock = new();
    private readonly Dictionary<int, EventFd> _events = [];
    private bool _disposed;

    /// <summary>The eventfd for <paramref name="vector"/>, created on first use.</summary>
    public EventFd Get(int vector)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_events.TryGetValue(vector, out EventFd? e))
            {
                e = new EventFd();
                _events.Add(vector, e);
            }

            return e;
        }
    }

    /// <summary>Called on the interrupt controller's thread: one eventfd write.</summary>
    public void Deliver(int vector)
    {
        EventFd? e;
        lock (_lock)
        {
            if (_disposed || !_events.TryGetValue(vector, out e))
            {
                return;
            }
        }

        e.Signal();
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (EventFd e in _events.Values)
            {
                e.Dispose();
            }

            _events.Clear();
        }
    }
}
