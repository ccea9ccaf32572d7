using Vmm.Core.Events;
using Vmm.Core.Interrupts;

namespace Vmm.Virtio.Driver;

/// <summary>
/// The guest driver's side of interrupt delivery: one eventfd per vector, which the driver's
/// completion and interrupt threads wait on, and the allocator of the vectors a driver programs
/// into MSI-X entries (as Linux's vector allocator hands them out). As an
/// <see cref="IInterruptSink"/> it receives the InterruptControllerActor's deliveries
/// (function-backed lines) and signals the vector's eventfd; it is safe on any thread, so the
/// controller's port calls it from the raising thread. With event-backed lines the same
/// eventfd is the line itself, so a device or vhost-user back-end wakes the driver with one
/// eventfd write and nothing in between.
/// </summary>
public sealed class GuestInterruptEvents : IConcurrentInterruptSink, IDisposable
{
    private readonly object _lock = new();
    private readonly Dictionary<int, EventFd> _events = [];
    private readonly SortedSet<int> _allocated = [];
    private readonly int _firstVector;
    private readonly int _vectorLimit;
    private bool _disposed;

    /// <summary>Vectors for MSI-X are allocated in [64, 2048), the machine's range (VirtioMachineLayout).</summary>
    public GuestInterruptEvents()
        : this(Machine.VirtioMachineLayout.PciFirstVector, Machine.VirtioMachineLayout.MsiVectorLimit)
    {
    }

    /// <param name="firstVector">The lowest vector <see cref="AllocateVectors"/> hands out (those below are fixed interrupts).</param>
    /// <param name="vectorLimit">One past the highest.</param>
    public GuestInterruptEvents(int firstVector, int vectorLimit)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(firstVector);
        ArgumentOutOfRangeException.ThrowIfLessThanOrEqual(vectorLimit, firstVector);
        _firstVector = firstVector;
        _vectorLimit = vectorLimit;
    }

    /// <summary>
    /// Allocates <paramref name="count"/> consecutive vectors, the lowest free ones, for a driver
    /// to program into its MSI-X entries. Throws <see cref="InvalidOperationException"/> when the
    /// range has no such run left.
    /// </summary>
    public IReadOnlyList<int> AllocateVectors(int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(count);
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            int start = _firstVector;
            foreach (int used in _allocated)
            {
                if (used - start >= count)
                {
                    break;
                }

                start = Math.Max(start, used + 1);
            }

            if (start > _vectorLimit - count)
            {
                throw new InvalidOperationException($"No {count} free interrupt vectors are left in [{_firstVector}, {_vectorLimit}).");
            }

            int[] vectors = [.. Enumerable.Range(start, count)];
            _allocated.UnionWith(vectors);
            return vectors;
        }
    }

    /// <summary>Returns vectors from <see cref="AllocateVectors"/>; their eventfds stay (a late delivery is harmless).</summary>
    public void FreeVectors(IEnumerable<int> vectors)
    {
        ArgumentNullException.ThrowIfNull(vectors);
        lock (_lock)
        {
            _allocated.ExceptWith(vectors);
        }
    }

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

    /// <summary>One eventfd write; called on any thread (the controller's, a device worker, a notifier loop).</summary>
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
