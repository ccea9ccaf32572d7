namespace Vmm.Core.Interrupts;

/// <summary>Raise interrupt <paramref name="Vector"/>: delivered to whatever the VMM attached.</summary>
public sealed record RaiseInterrupt(int Vector);

/// <summary>Attach the receiver of interrupts (the guest driver here, a vCPU in a real host).</summary>
public sealed record AttachInterruptSink(IInterruptSink Sink);

/// <summary>Detach the receiver; interrupts raised meanwhile are counted, not delivered.</summary>
public sealed class DetachInterruptSink
{
    public static readonly DetachInterruptSink Instance = new();

    private DetachInterruptSink()
    {
    }
}

/// <summary>
/// Serve <paramref name="Port"/>: its lines' raises are delivered to this controller's sink from
/// now on (those made before are delivered at once). A port is served by one controller.
/// </summary>
public sealed record AttachInterruptPort(InterruptPort Port);

/// <summary>Stop serving <paramref name="Port"/>: its raises are counted there and kept pending, not delivered.</summary>
public sealed record DetachInterruptPort(InterruptPort Port);

/// <summary>Query: how many interrupts each vector received; answered with <see cref="InterruptCounts"/>.</summary>
public sealed class GetInterruptCounts
{
    public static readonly GetInterruptCounts Instance = new();

    private GetInterruptCounts()
    {
    }
}

public sealed record InterruptCounts(IReadOnlyDictionary<int, long> ByVector);

/// <summary>The receiver of interrupts. Called on the controller's mailbox thread: return quickly.</summary>
public interface IInterruptSink
{
    void Deliver(int vector);
}

/// <summary>
/// A sink whose <see cref="IInterruptSink.Deliver"/> is safe on any thread, concurrently: the
/// controller's <see cref="InterruptPort"/> then calls it straight from the raising thread (a
/// notifier loop, a device worker) instead of through the controller's mailbox.
/// </summary>
public interface IConcurrentInterruptSink : IInterruptSink
{
}
