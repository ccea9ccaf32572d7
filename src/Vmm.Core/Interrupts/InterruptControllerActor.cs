using Akka.Actor;

namespace Vmm.Core.Interrupts;

/// <summary>
/// The VM's interrupt controller: function-backed lines Tell it <see cref="RaiseInterrupt"/>,
/// and it delivers each to the attached sink (the guest driver, or an embedding host's vCPU).
/// </summary>
public sealed class InterruptControllerActor : ReceiveActor
{
    private readonly Dictionary<int, long> _counts = [];
    private IInterruptSink? _sink;

    public InterruptControllerActor(IInterruptSink? sink)
    {
        _sink = sink;
        Receive<RaiseInterrupt>(HandleRaise);
        Receive<AttachInterruptSink>(HandleAttach);
        Receive<DetachInterruptSink>(_ => _sink = null);
        Receive<GetInterruptCounts>(_ => Sender.Tell(new InterruptCounts(new Dictionary<int, long>(_counts))));
    }

    public static Props Props(IInterruptSink? sink = null) => Akka.Actor.Props.Create(() => new InterruptControllerActor(sink));

    private void HandleRaise(RaiseInterrupt message)
    {
        _counts[message.Vector] = _counts.GetValueOrDefault(message.Vector) + 1;
        _sink?.Deliver(message.Vector);
    }

    private void HandleAttach(AttachInterruptSink message) => _sink = message.Sink;
}
