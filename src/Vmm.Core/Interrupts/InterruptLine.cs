using Akka.Actor;
using Vmm.Core.Events;

namespace Vmm.Core.Interrupts;

/// <summary>
/// Where a device raises an interrupt (a virtqueue's used-buffer notification or the config
/// change interrupt). Either event-backed (it has an eventfd, which a vhost-user back-end can
/// signal directly, as KVM's irqfd does) or function-backed (someone must proxy the raise).
/// </summary>
/// <remarks>
/// A line can be masked by its owner (the MSI-X table entry's mask bit or the function mask,
/// PCI 3.0 §6.8.2.9 and §6.8.3.4): while masked, <see cref="Raise"/> records the interrupt as
/// pending instead of delivering it, and <see cref="Unmask"/> delivers exactly one if any was
/// recorded. A writer that bypasses <see cref="Raise"/> (a back-end writing
/// <see cref="EventFd"/> itself) is not stopped by the mask: whoever handed the eventfd out
/// listens to <see cref="RoutingChanged"/> and routes such writes through <see cref="Raise"/>
/// while the line is masked (QEMU's masked notifier). A line that forwards to another (a
/// queue's line that follows the queue's current MSI-X vector) overrides the virtual members
/// and raises <see cref="RoutingChanged"/> when its target changes.
/// </remarks>
public abstract class InterruptLine
{
    private const int MaskedBit = 1;
    private const int PendingBit = 2;

    private readonly int _vector;
    private int _state;

    protected InterruptLine(int vector)
    {
        _vector = vector;
    }

    /// <summary>The vector (interrupt number) this line raises; a forwarding line reports its target's.</summary>
    public virtual int Vector => _vector;

    /// <summary>The eventfd that raises this line, when it has one; null for function-backed lines.</summary>
    public virtual EventFd? EventFd => null;

    /// <summary>True while the owner has the line masked.</summary>
    public virtual bool IsMasked => (Volatile.Read(ref _state) & MaskedBit) != 0;

    /// <summary>True when an interrupt was raised while masked and not yet delivered (the PBA bit).</summary>
    public virtual bool IsPending => (Volatile.Read(ref _state) & PendingBit) != 0;

    /// <summary>
    /// Raised when <see cref="IsMasked"/> or <see cref="EventFd"/> changed, on the thread that
    /// changed it (a vCPU's MMIO write to the MSI-X table or to queue_msix_vector), before that
    /// write completes. Whoever gave <see cref="EventFd"/> to a direct writer re-routes it: to
    /// <see cref="EventFd"/> while unmasked, through <see cref="Raise"/> while masked.
    /// </summary>
    public event Action<InterruptLine>? RoutingChanged;

    /// <summary>
    /// Raises the interrupt, or records it as pending while the line is masked. Cheap and
    /// callable from any thread (the queue workers).
    /// </summary>
    public virtual void Raise()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if ((state & MaskedBit) == 0)
            {
                Deliver();
                return;
            }

            if ((state & PendingBit) != 0 || Interlocked.CompareExchange(ref _state, state | PendingBit, state) == state)
            {
                return;
            }
        }
    }

    /// <summary>Masks the line: raises from now on only set the pending bit.</summary>
    public virtual void Mask()
    {
        if ((Interlocked.Or(ref _state, MaskedBit) & MaskedBit) == 0)
        {
            OnRoutingChanged();
        }
    }

    /// <summary>
    /// Unmasks the line. The handlers of <see cref="RoutingChanged"/> run first (so direct writers
    /// are back on <see cref="EventFd"/>), then one interrupt is delivered if any was pending
    /// (PCI 3.0 §6.8.3.4: a vector unmasked with its pending bit set sends the message once and
    /// clears the bit). A raise racing with the unmask is either the pending one or delivered
    /// directly: never lost, never delivered twice for one pending bit.
    /// </summary>
    public virtual void Unmask()
    {
        int old = Interlocked.And(ref _state, ~MaskedBit);
        if ((old & MaskedBit) == 0)
        {
            return;
        }

        OnRoutingChanged();
        while (true)
        {
            // Masked again meanwhile (another unmask/mask pair): the pending bit waits for that unmask.
            int state = Volatile.Read(ref _state);
            if ((state & (MaskedBit | PendingBit)) != PendingBit)
            {
                return;
            }

            if (Interlocked.CompareExchange(ref _state, state & ~PendingBit, state) == state)
            {
                Deliver();
                return;
            }
        }
    }

    /// <summary>
    /// Clears a pending interrupt without delivering it: its cause was dealt with some other way
    /// (PCI 3.0 §6.8.3.4), as after a device reset. True when one was pending.
    /// </summary>
    public virtual bool ClearPending() => (Interlocked.And(ref _state, ~PendingBit) & PendingBit) != 0;

    /// <summary>Tells the <see cref="RoutingChanged"/> listeners that the mask or the eventfd changed.</summary>
    protected void OnRoutingChanged() => RoutingChanged?.Invoke(this);

    /// <summary>Delivers one interrupt (the line is not masked). Cheap and callable from any thread.</summary>
    protected abstract void Deliver();
}

/// <summary>A line raised by signalling an eventfd that the VMM (or an irqfd) waits on.</summary>
public sealed class EventBackedInterruptLine : InterruptLine
{
    private readonly EventFd _eventFd;

    public EventBackedInterruptLine(int vector, EventFd eventFd) : base(vector)
    {
        _eventFd = eventFd ?? throw new ArgumentNullException(nameof(eventFd));
    }

    public override EventFd EventFd => _eventFd;

    protected override void Deliver() => _eventFd.Signal();
}

/// <summary>A line raised by a call: here, a Tell to the VM's InterruptControllerActor.</summary>
public sealed class FunctionBackedInterruptLine : InterruptLine
{
    private readonly Action<int> _raise;

    public FunctionBackedInterruptLine(int vector, Action<int> raise) : base(vector)
    {
        _raise = raise ?? throw new ArgumentNullException(nameof(raise));
    }

    /// <summary>A line that tells <paramref name="controller"/> to raise <paramref name="vector"/>.</summary>
    public static FunctionBackedInterruptLine ToController(int vector, IActorRef controller) =>
        new(vector, v => controller.Tell(new RaiseInterrupt(v)));

    protected override void Deliver() => _raise(Vector);
}
