using Vmm.Core.Events;
using Vmm.Core.Posix;

namespace Vmm.Virtio.Queues;

/// <summary>
/// A device's request handling for one queue when requests may finish later, and in any order
/// (virtio 1.2, 2.7.13 / 2.8: a device returns buffers as it finishes them, not necessarily in
/// the order they were made available; 5.2: virtio-blk completions may be out of order). Used
/// only by its queue's <see cref="VirtqueueWorker"/>, on the worker thread.
/// </summary>
/// <remarks>
/// Per batch the worker pops chains and <see cref="Start"/>s each, calls <see cref="Submit"/>
/// once, then <see cref="Reap"/>s whatever finished; it sleeps on its kick, its stop event and
/// <see cref="CompletionHandle"/>. When the queue stops it reaps until nothing is in flight, so
/// every request started is returned to the driver before the queue's state is read.
/// <see cref="IDisposable.Dispose"/> (on the worker, as it ends) waits for operations still in
/// flight: they point into guest memory.
/// </remarks>
public interface IQueueRequestProcessor : IDisposable
{
    /// <summary>Requests started and not yet completed.</summary>
    int InFlight { get; }

    /// <summary>Polls readable while finished requests wait to be reaped (null: never any in flight, or <see cref="WaitsForEvents"/>).</summary>
    SafeFileDescriptor? CompletionHandle { get; }

    /// <summary>
    /// True when the worker must sleep through <see cref="WaitForWork"/> (an io_uring that also
    /// watches the kick and stop eventfds, so one system call submits and sleeps); false when it
    /// polls its kick, its stop event and <see cref="CompletionHandle"/> itself.
    /// </summary>
    bool WaitsForEvents { get; }

    /// <summary>
    /// Used when <see cref="WaitsForEvents"/>: sleeps until a kick (<paramref name="kick"/>, null
    /// for a queue that polls), a stop, finished requests or <paramref name="timeoutMilliseconds"/>
    /// (-1: no limit), and says which.
    /// </summary>
    QueueWake WaitForWork(EventFd? kick, EventFd stop, int timeoutMilliseconds);

    /// <summary>
    /// Takes a chain just popped. True when it finished at once (<paramref name="bytesWritten"/>
    /// is what the device wrote into the chain); false when it completes through <see cref="Reap"/>.
    /// A <see cref="VirtqueueException"/> means the ring is broken and stops the queue.
    /// </summary>
    bool Start(DescriptorChain chain, out uint bytesWritten);

    /// <summary>Hands the requests started since the last call to the I/O engine.</summary>
    void Submit();

    /// <summary>Completes every finished request on <paramref name="queue"/> (<see cref="IDeviceQueue.Complete"/>); returns how many.</summary>
    int Reap(IDeviceQueue queue);

    /// <summary>Blocks until at least one request can be reaped; returns at once when none is in flight.</summary>
    void WaitForCompletion();
}
