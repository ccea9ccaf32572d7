using Akka.Actor;

namespace Vmm.Core.Interrupts;

/// <summary>
/// The VM's interrupt controller: the owner of delivery to the attached sink (the guest driver,
/// or an embedding host's vCPU). Function-backed lines reach it through its
/// <see cref="InterruptPort"/> (batched: one message per burst, or a direct call into a
/// concurrent sink) or, one message each, as <see cref="RaiseInterrupt"/>.
/// </summary>
public sealed class InterruptControllerActor : ReceiveActor
{
    private readonly InterruptPort _port;
    private IInterruptSink? _sink;

    public InterruptControllerActor(InterruptPort port, IInterruptSink? sink)
    {
        _port = port ?? throw new ArgumentNullException(nameof(port));
        _sink = sink;
        Receive<DeliverPending>(_ => _port.DrainPending(_sink));
        Receive<RaiseInterrupt>(HandleRaise);
        Receive<AttachInterruptSink>(message => SetSink(message.Sink));
        Receive<DetachInterruptSink>(_ => SetSink(null));
        Receive<GetInterruptCounts>(_ => Sender.Tell(new InterruptCounts(_port.Counts())));
    }

    /// <summary>A controller with a port of its own (reached by <see cref="RaiseInterrupt"/> messages only).</summary>
    public static Props Props(IInterruptSink? sink = null) => Props(new InterruptPort(), sink);

    /// <summary>A controller that serves <paramref name="port"/>: lines made by <see cref="InterruptPort.CreateLine"/> reach it.</summary>
    public static Props Props(InterruptPort port, IInterruptSink? sink = null)
    {
        ArgumentNullException.ThrowIfNull(port);
        return Akka.Actor.Props.Create(() => new InterruptControllerActor(port, sink));
    }

    protected override void PreStart()
    {
        _port.SetSink(_sink);
        _port.Bind(Self);
    }

    protected override void PostStop() => _port.Unbind(Self);

    private void HandleRaise(RaiseInterrupt message)
    {
        _port.Count(message.Vector);
        _sink?.Deliver(message.Vector);
    }

    private void SetSink(IInterruptSink? sink)
    {
        _sink = sink;
        _port.SetSink(sink);

        // Vectors that waited for the doorbell go to the new sink now (or are dropped on detach,
        // as raises without a sink always were).
        _port.DrainPending(sink);
    }

    /// <summary>The port's doorbell: vectors are pending in the port.</summary>
    internal sealed class DeliverPending
    {
        public static readonly DeliverPending Instance = new();

        private DeliverPending()
        {
        }
    }
}
