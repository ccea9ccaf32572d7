using Vmm.Core.Events;

namespace Vmm.Core.Interrupts;

/// <summary>
/// A line that is another line, which can change: a virtio-pci queue's line follows the queue's
/// <c>queue_msix_vector</c> (and falls back to the ISR path when MSI-X is disabled) while the
/// device keeps raising the same object. Every member is the current target's: its vector,
/// its eventfd, its mask and pending bits; with no target the line is silent (NO_VECTOR,
/// virtio 1.2 §4.1.5.3: no interrupt is delivered for that queue).
/// </summary>
/// <remarks>
/// <see cref="InterruptLine.RoutingChanged"/> is raised (with this line as the argument) when
/// <see cref="Retarget"/> changes the target and whenever the target raises its own, so a
/// listener of this line hears every mask change of the vector it currently follows.
/// </remarks>
public sealed class ForwardingInterruptLine : InterruptLine
{
    private readonly object _lock = new();
    private readonly Action<InterruptLine> _onTargetRoutingChanged;
    private InterruptLine? _target;

    /// <param name="target">The first target; null for none.</param>
    public ForwardingInterruptLine(InterruptLine? target = null) : base(-1)
    {
        _onTargetRoutingChanged = _ => OnRoutingChanged();
        Attach(target);
    }

    /// <summary>The line this one raises now; null when it raises nothing.</summary>
    public InterruptLine? Target => Volatile.Read(ref _target);

    /// <summary>The target's vector; -1 without a target.</summary>
    public override int Vector => Target?.Vector ?? -1;

    public override EventFd? EventFd => Target?.EventFd;

    public override bool IsMasked => Target?.IsMasked ?? false;

    public override bool IsPending => Target?.IsPending ?? false;

    public override void Raise() => Target?.Raise();

    public override void Mask() => Target?.Mask();

    public override void Unmask() => Target?.Unmask();

    public override bool ClearPending() => Target?.ClearPending() ?? false;

    /// <summary>
    /// Points the line at <paramref name="target"/> (null: none). When that is a change, the
    /// <see cref="InterruptLine.RoutingChanged"/> listeners run on this thread before it returns.
    /// A raise already under way may still reach the previous target (an interrupt in flight).
    /// </summary>
    public void Retarget(InterruptLine? target)
    {
        if (ReferenceEquals(target, this))
        {
            throw new ArgumentException("A line cannot forward to itself.", nameof(target));
        }

        lock (_lock)
        {
            InterruptLine? old = _target;
            if (ReferenceEquals(old, target))
            {
                return;
            }

            if (old is not null)
            {
                old.RoutingChanged -= _onTargetRoutingChanged;
            }

            Attach(target);
        }

        OnRoutingChanged();
    }

    protected override void Deliver() => Target?.Raise();

    private void Attach(InterruptLine? target)
    {
        if (target is not null)
        {
            target.RoutingChanged += _onTargetRoutingChanged;
        }

        Volatile.Write(ref _target, target);
    }
}
