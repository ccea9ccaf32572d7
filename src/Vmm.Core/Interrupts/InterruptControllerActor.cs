using Akka.Actor;

namespace Vmm.Core.Interrupts;

/// <summary>
/// The VM's interrupt controller: the owner of delivery to the attached sink (the guest driver,
/// or an embedding host's vCPU). Function-backed lines reach it through an attached
/// <see cref="InterruptPort"/> (batched: one message per burst, or a direct call into a
/// concurrent sink) or, one message each, as <see cref="RaiseInterrupt"/>.
/// </summary>
public sealed class InterruptControllerActor : ReceiveActor
{
    private readonly List<InterruptPort> _ports = [];
    private readonly Dictionary<int, long> _messageCounts = [];
    private IInterruptSink? _sink;

    public InterruptControllerActor(IInterruptSink? sink)
    {
        _sink = sink;
        Receive<DeliverPending>(HandleDeliverPending);
        Receive<RaiseInterrupt>(HandleRaise);
        Receive<AttachInterruptSink>(message => SetSink(message.Sink));
        Receive<DetachInterruptSink>(_ => SetSink(null));
        Receive<AttachInterruptPort>(HandleAttachPort);
        Receive<DetachInterruptPort>(HandleDetachPort);
        Receive<GetInterruptCounts>(_ => Sender.Tell(new InterruptCounts(Counts())));
    }

    public static Props Props(IInterruptSink? sink = null) => Akka.Actor.Props.Create(() => new InterruptControllerActor(sink));

    protected override void PostStop()
    {
        foreach (InterruptPort port in _ports)
        {
            port.Unbind(Self);
        }
    }

    private void HandleDeliverPending(DeliverPending message) => message.Port.DrainPending(_sink);

    private void HandleRaise(RaiseInterrupt message)
    {
        _messageCounts[message.Vector] = _messageCounts.GetValueOrDefault(message.Vector) + 1;
        _sink?.Deliver(message.Vector);
    }

    private void HandleAttachPort(AttachInterruptPort message)
    {
        if (_ports.Contains(message.Port))
        {
            return;
        }

        _ports.Add(message.Port);
        message.Port.SetSink(_sink);
        message.Port.Bind(Self);
    }

    private void HandleDetachPort(DetachInterruptPort message)
    {
        if (_ports.Remove(message.Port))
        {
            message.Port.Unbind(Self);
        }
    }

    private void SetSink(IInterruptSink? sink)
    {
        _sink = sink;
        foreach (InterruptPort port in _ports)
        {
            port.SetSink(sink);

            // Vectors that waited for the doorbell go to the new sink now (or are dropped on
            // detach, as raises without a sink always were).
            port.DrainPending(sink);
        }
    }

    private Dictionary<int, long> Counts()
    {
        var counts = new Dictionary<int, long>(_messageCounts);
        foreach (InterruptPort port in _ports)
        {
            foreach ((int vector, long count) in port.Counts())
            {
                counts[vector] = counts.GetValueOrDefault(vector) + count;
            }
        }

        return counts;
    }

    /// <summary>A port's doorbell: vectors are pending in <see cref="Port"/>. One instance per port, sent again and again.</summary>
    internal sealed class DeliverPending(InterruptPort port)
    {
        public InterruptPort Port { get; } = port;
    }
}
