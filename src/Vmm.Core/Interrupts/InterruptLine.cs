using Akka.Actor;
using Vmm.Core.Events;

namespace Vmm.Core.Interrupts;

/// <summary>
/// Where a device raises an interrupt (a virtqueue's used-buffer notification or the config
/// change interrupt). Either event-backed (it has an eventfd, which a vhost-user back-end can
/// signal directly, as KVM's irqfd does) or function-backed (someone must proxy the raise).
/// </summary>
public abstract class InterruptLine
{
    protected InterruptLine(int vector)
    {
        Vector = vector;
    }

    /// <summary>The vector (MSI-X entry or interrupt number) this line raises.</summary>
    public int Vector { get; }

    /// <summary>The eventfd that raises this line, when it has one; null for function-backed lines.</summary>
    public virtual EventFd? EventFd => null;

    /// <summary>Raises the interrupt. Cheap and callable from any thread (the queue workers).</summary>
    public abstract void Raise();
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

    public override void Raise() => _eventFd.Signal();
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

    public override void Raise() => _raise(Vector);
}
