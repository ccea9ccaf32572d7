using System.Collections.Concurrent;
using Akka.Actor;

namespace Vmm.Core.Interrupts;

/// <summary>
/// Where function-backed lines raise the VM's vectors: the batched path into the
/// <see cref="InterruptControllerActor"/> it is attached to (<see cref="AttachInterruptPort"/>).
/// A raise costs no allocation and no message of its own. It counts the vector, then either
/// <list type="bullet">
/// <item>calls the attached sink at once, when the sink is an <see cref="IConcurrentInterruptSink"/>
/// (safe from any thread: the guest driver's eventfds, a host's thread-safe interrupt injection),
/// so a notifier loop or a device worker delivers with no thread hand-off; or</item>
/// <item>marks the vector pending and rings the controller's doorbell: one message, however many
/// vectors are raised (and however often) before the controller drains them on its mailbox thread.
/// A vector raised twice before the drain is delivered once, as a pending MSI is
/// (PCI 3.0 §6.8.3.4): the receiver looks at every completion when woken.</item>
/// </list>
/// The controller stays the owner of the sink: it is attached and detached with the
/// controller's messages, and a sink that is not concurrent is only ever called on the
/// controller's mailbox thread. Raises before the port is attached are kept pending and
/// delivered when it is.
/// </summary>
public sealed class InterruptPort
{
    private readonly ConcurrentDictionary<int, Slot> _slots = new();
    private readonly ConcurrentQueue<Slot> _ready = new();
    private IActorRef? _controller;
    private IInterruptSink? _direct;
    private int _doorbell;

    public InterruptPort()
    {
        Doorbell = new InterruptControllerActor.DeliverPending(this);
    }

    /// <summary>The one message this port sends its controller, made once.</summary>
    internal InterruptControllerActor.DeliverPending Doorbell { get; }

    /// <summary>A function-backed line that raises <paramref name="vector"/> through this port.</summary>
    public InterruptLine CreateLine(int vector)
    {
        Slot slot = SlotOf(vector);
        return new FunctionBackedInterruptLine(vector, _ => Raise(slot));
    }

    /// <summary>Raises <paramref name="vector"/>. Callable from any thread.</summary>
    public void Raise(int vector) => Raise(SlotOf(vector));

    /// <summary>How many times each vector was raised through this port.</summary>
    public IReadOnlyDictionary<int, long> Counts() =>
        _slots.ToDictionary(kv => kv.Key, kv => Interlocked.Read(ref kv.Value.Count));

    /// <summary>The controller took this port: raises ring its doorbell from now on.</summary>
    internal void Bind(IActorRef controller)
    {
        Volatile.Write(ref _controller, controller);

        // Anything raised before the controller started is waiting: one drain delivers it.
        RingDoorbell();
    }

    /// <summary>The controller stopped: raises are counted and kept pending, nobody is called.</summary>
    internal void Unbind(IActorRef controller)
    {
        if (Interlocked.CompareExchange(ref _controller, null, controller) == controller)
        {
            Volatile.Write(ref _direct, null);
        }
    }

    /// <summary>
    /// The controller's sink changed (null: detached). A concurrent sink is called directly by
    /// raisers from now on; a raiser that read the previous one may still call it once more.
    /// </summary>
    internal void SetSink(IInterruptSink? sink) => Volatile.Write(ref _direct, sink as IConcurrentInterruptSink);

    /// <summary>On the controller's mailbox thread: delivers every pending vector once to <paramref name="sink"/> (null: drops them).</summary>
    internal void DrainPending(IInterruptSink? sink)
    {
        // Reopened before the queue is read: a raise from here on rings again (at worst one
        // extra, empty drain), so none waits for a doorbell that was already answered.
        Volatile.Write(ref _doorbell, 0);
        while (_ready.TryDequeue(out Slot? slot))
        {
            // Cleared before delivering: a raise during the delivery queues the vector again.
            Volatile.Write(ref slot.Pending, 0);
            sink?.Deliver(slot.Vector);
        }
    }

    private Slot SlotOf(int vector) => _slots.GetOrAdd(vector, static v => new Slot(v));

    private void Raise(Slot slot)
    {
        Interlocked.Increment(ref slot.Count);
        if (Volatile.Read(ref _direct) is { } direct)
        {
            direct.Deliver(slot.Vector);
            return;
        }

        if (Interlocked.Exchange(ref slot.Pending, 1) == 0)
        {
            _ready.Enqueue(slot);
            RingDoorbell();
        }
    }

    private void RingDoorbell()
    {
        while (Interlocked.Exchange(ref _doorbell, 1) == 0)
        {
            if (Volatile.Read(ref _controller) is { } controller)
            {
                controller.Tell(Doorbell);
                return;
            }

            // No controller yet: reopen, and look again in case one was bound meanwhile (its
            // Bind may have found the doorbell closed by this raiser and left the ringing to it).
            Volatile.Write(ref _doorbell, 0);
            if (Volatile.Read(ref _controller) is null)
            {
                return;
            }
        }
    }

    private sealed class Slot(int vector)
    {
        public readonly int Vector = vector;
        public long Count;
        public int Pending;
    }
}
